// CPU kernels that another op's kernel calls directly, as a C++ function: a decode step runs
// many tiny ops, and a call through the dispatcher costs more than the work.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

namespace kr {

std::tuple<at::Tensor, at::Tensor> rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                double eps);
// rotary's checks of x [B, T, H, D] and its cos/sin tables, naming op and x's role.
void check_rotary_inputs(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                         const char* op, const char* xname);
at::Tensor rotary_cpu(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace kr
