// Parts of libtorch's C++ API that tch does not expose: autocast for a given device type and
// precision (tch only switches CUDA autocast on and off), the CUDA caching allocator's peak
// statistics, and dropping a tensor's gradient (`p.grad = None`). Every function catches C++ exceptions and reports failure by its return value.

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/Context.h>
#include <c10/core/CachingDeviceAllocator.h>

static at::DeviceType device_type(int cuda) { return cuda ? at::kCUDA : at::kCPU; }

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
}
