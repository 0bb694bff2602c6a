// A small cache of large, already-touched host buffers for kernel outputs.
//
// Why: PyTorch's CPU allocator hands every tensor of 32 MiB or more to glibc, which maps fresh
// pages from the OS for each one; the first write to those pages page-faults, and for an
// element-wise op like the LIF neuron that costs more than the arithmetic (about 17 ms per
// 32 MiB on the 16 GB/s machine these kernels were tuned on). Outputs of at least kMinBytes
// are therefore taken from this pool: a freed output goes back to the pool instead of the OS,
// and the next output of the same rounded size reuses it, warm.
//
// Contract: a tensor from here is an ordinary CPU tensor (save, numpy, share_memory_ all work),
// except that its storage cannot grow: resize_ to a larger size raises. The pool
// keeps at most QSNN_HOST_POOL_MB megabytes of idle buffers (environment, read once; default
// 512; 0 turns pooling off); buffers beyond that go back to the OS when freed. Sizes are rounded
// up to 2 MiB (huge-page aligned), and a request takes an idle buffer of exactly that size.
#pragma once

#include <ATen/ATen.h>
#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>
#include <iterator>
#include <map>
#include <mutex>

namespace qsnn {

class HostPool {
 public:
  static constexpr size_t kMinBytes = size_t(1) << 20;
  static constexpr size_t kAlign = size_t(2) << 20;  // huge-page aligned: fewer faults on first touch

  // Leaked on purpose: tensors may be freed during interpreter shutdown, after static destructors.
  static HostPool& instance() {
    static HostPool* pool = new HostPool();
    return *pool;
  }

  // An uninitialized tensor of `sizes` and `dtype`, pooled when large enough.
  at::Tensor empty(at::IntArrayRef sizes, at::ScalarType dtype) {
    const auto options = at::TensorOptions().dtype(dtype).device(at::kCPU);
    int64_t numel = 1;
    for (auto s : sizes) numel *= s;
    const size_t bytes = static_cast<size_t>(numel) * at::elementSize(dtype);
    if (limit_ == 0 || bytes < kMinBytes) return at::empty(sizes, options);
    const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
    void* ptr = acquire(rounded);
    return at::from_blob(
        ptr, sizes, [rounded](void* p) { HostPool::instance().release(p, rounded); }, options);
  }

 private:
  HostPool() {
    const char* env = std::getenv("QSNN_HOST_POOL_MB");
    limit_ = (env ? static_cast<size_t>(std::strtoull(env, nullptr, 10)) : size_t(512)) << 20;
  }

  void* acquire(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto range = idle_.equal_range(bytes);
      if (range.first != range.second) {
        auto it = std::prev(range.second);  // the most recently freed: the likeliest still in cache
        void* p = it->second;
        idle_.erase(it);
        idle_bytes_ -= bytes;
        return p;
      }
    }
    void* p = std::aligned_alloc(kAlign, bytes);
    TORCH_CHECK(p != nullptr, "qsnn host pool: out of memory allocating ", bytes, " bytes");
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);  // a hint; harmless where transparent huge pages are off
#endif
    return p;
  }

  void release(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (idle_bytes_ + bytes <= limit_) {
        idle_.emplace(bytes, p);
        idle_bytes_ += bytes;
        return;
      }
    }
    std::free(p);
  }

  std::mutex mutex_;
  std::multimap<size_t, void*> idle_;
  size_t idle_bytes_ = 0;
  size_t limit_ = 0;
};

}  // namespace qsnn
