// Parts of libtorch's C++ API that tch does not expose: autocast for a given device type and
// precision (tch only switches CUDA autocast on and off), the CUDA caching allocator's peak
// statistics, dropping a tensor's gradient (`p.grad = None`), whether gradients are being
// recorded (`torch.is_grad_enabled()`), and the multi-tensor operations
// of PyTorch's optimiser path (`_fused_adamw_`, `_foreach_norm`,
// `_amp_foreach_non_finite_check_and_unscale_`), which take lists of tensors. Every function
// catches C++ exceptions and reports failure by its return value, with the message kept for
// `mb_last_error`.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/Context.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <string>
#include <vector>

static at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }

static thread_local std::string last_error;

// tch's tensor handles (`at::Tensor*`) as a list of tensors sharing their storage.
static std::vector<at::Tensor> tensors(at::Tensor** ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; i++) v.push_back(*ts[i]);
  return v;
}

extern "C" {

// Enters an autocast region on the CPU (`cuda` = 0) or CUDA in bfloat16 (`bf16` = 1) or float16.
// Returns whether autocast was enabled before (to give to `mb_autocast_exit`), or -1.
int mb_autocast_enter(int cuda, int bf16) {
  try {
    auto dev = device_type(cuda);
    bool before = at::autocast::is_autocast_enabled(dev);
    at::autocast::set_autocast_dtype(dev, bf16 ? at::kBFloat16 : at::kHalf);
    at::autocast::set_autocast_enabled(dev, true);
    at::autocast::increment_nesting();
    return before ? 1 : 0;
  } catch (...) {
    return -1;
  }
}

// Leaves an autocast region, as Python's `torch.autocast.__exit__` does.
int mb_autocast_exit(int cuda, int before) {
  try {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    at::autocast::set_autocast_enabled(device_type(cuda), before != 0);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Holds autocast's cache of casted weights across regions: one more nesting level, autocast
// left as it is. The cache is cleared when the last level (this one or a region's) is left.
int mb_autocast_hold() {
  try {
    at::autocast::increment_nesting();
    return 0;
  } catch (...) {
    return -1;
  }
}

// Lets go of what `mb_autocast_hold` held.
int mb_autocast_release() {
  try {
    if (at::autocast::decrement_nesting() == 0) {
      at::autocast::clear_cache();
    }
    return 0;
  } catch (...) {
    return -1;
  }
}

// Peak bytes allocated on CUDA device `index` since the last reset, or -1.
long long mb_cuda_peak_allocated(int index) {
  try {
    if (!at::hasCUDA()) return -1;
    auto stats = c10::getDeviceAllocator(at::kCUDA)->getDeviceStats(index);
    return stats.allocated_bytes[0].peak;
  } catch (...) {
    return -1;
  }
}

// Resets the peak statistics of CUDA device `index`.
int mb_cuda_reset_peak(int index) {
  try {
    if (!at::hasCUDA()) return -1;
    c10::getDeviceAllocator(at::kCUDA)->resetPeakStats(index);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Drops the gradient of `t` (a tch tensor handle, which is an `at::Tensor*`), as
// `p.grad = None` does in Python. Returns 0, or -1.
int mb_set_grad_none(at::Tensor* t) {
  try {
    t->mutable_grad() = at::Tensor();
    return 0;
  } catch (...) {
    return -1;
  }
}

// Whether this thread records gradients (`torch.is_grad_enabled()`): 1 or 0.
int mb_grad_enabled() { return at::GradMode::is_enabled() ? 1 : 0; }

// The message of this thread's last failed call.
const char* mb_last_error() { return last_error.c_str(); }

// One AdamW step over `n` parameters of one device and dtype, in place, as
// `torch.optim.AdamW(fused=True)` takes it: `_fused_adamw_` with every parameter at the step
// held by `step` (a float scalar on their device). `grad_scale`, when not null, divides every
// gradient first (a one-element float tensor on their device). Returns 0, or -1.
int mb_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs,
                   at::Tensor** exp_avg_sqs, int n, at::Tensor* step, double lr, double beta1,
                   double beta2, double weight_decay, double eps, at::Tensor* grad_scale) {
  try {
    std::vector<at::Tensor> steps(n, *step);
    std::optional<at::Tensor> scale;
    if (grad_scale) scale = *grad_scale;
    at::_fused_adamw_(tensors(params, n), tensors(grads, n), tensors(exp_avgs, n),
                      tensors(exp_avg_sqs, n), {}, steps, lr, beta1, beta2, weight_decay, eps,
                      /*amsgrad=*/false, /*maximize=*/false, scale, std::nullopt);
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

// The global L2 norm of `n` tensors of one device, as `clip_grad_norm_`'s foreach path computes
// it (the norm of the per-tensor norms), written to `*out` as a new float scalar tensor that the
// caller owns. Returns 0, or -1.
int mb_global_norm(at::Tensor** ts, int n, at::Tensor** out) {
  try {
    auto norms = at::_foreach_norm(tensors(ts, n), 2);
    *out = new at::Tensor(at::linalg_vector_norm(at::stack(norms), 2).to(at::kFloat));
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}

// Multiplies `n` gradients of one device by `inv_scale` in place and sets `found_inf` (a
// one-element float tensor) to 1 if any of them holds an inf or a NaN, as `GradScaler.unscale_`
// does. Returns 0, or -1.
int mb_unscale(at::Tensor** ts, int n, at::Tensor* found_inf, at::Tensor* inv_scale) {
  try {
    at::_amp_foreach_non_finite_check_and_unscale_(tensors(ts, n), *found_inf, *inv_scale);
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return -1;
  }
}
}
