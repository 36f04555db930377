"""While the CPU runs the device fallbacks (KR_MINI_LLM_OPS=fallback), the tests of promises only
the native kernels make (marked native_kernels, each with the promise as its reason) are deselected:
the rest of the op suite is the fallbacks' proof."""
from kr_mini_llm import ops


def pytest_collection_modifyitems(config, items):
    if ops.backend_report("cpu")["attention"] == "native":
        return
    native_only = [item for item in items if item.get_closest_marker("native_kernels") is not None]
    if native_only:
        config.hook.pytest_deselected(items=native_only)
        items[:] = [item for item in items if item.get_closest_marker("native_kernels") is None]
