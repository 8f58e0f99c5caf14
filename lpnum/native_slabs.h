// The thread runner of lpnum's native CPU kernels (lpnum/native.py builds every kernel with this directory on the
// include path): work cut into slabs, taken by XLA's intra-op pool and the calling thread.
#ifndef LPNUM_NATIVE_SLABS_H_
#define LPNUM_NATIVE_SLABS_H_

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>

#include "xla/ffi/api/ffi.h"

namespace lpnum {

struct Progress {
  std::atomic<int64_t> next{0};
  int64_t done = 0;
  int64_t total = 0;
  std::mutex mu;
  std::condition_variable cv;
};

// Runs item(start, count) over [0, n) cut into per_thread_slabs slabs per thread of XLA's pool (each at least
// min_item long, a multiple of align): helper threads and the calling thread take slabs until none is left, so a
// busy pool cannot stall the call (and with several slabs per thread, a helper that starts late still takes its
// share). Returns when every slab is done. The tasks hold copies of item (a helper may start after the call returned,
// finding nothing left).
template <class Item>
void for_slabs(xla::ffi::ThreadPool& pool, int64_t n, int64_t min_item, int64_t align, const Item& item,
               int64_t per_thread_slabs = 1) {
  auto progress = std::make_shared<Progress>();
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t slabs = threads * std::max<int64_t>(1, per_thread_slabs);
  const int64_t per_thread = (n + slabs - 1) / slabs;
  const int64_t width = std::max<int64_t>(min_item, (per_thread + align - 1) / align * align);
  progress->total = (n + width - 1) / width;
  auto drain = [progress, width, n, item] {
    int64_t ran = 0;
    for (int64_t i; (i = progress->next.fetch_add(1)) < progress->total; ++ran)
      item(i * width, std::min<int64_t>(width, n - i * width));
    if (ran) {
      std::lock_guard<std::mutex> lock(progress->mu);
      progress->done += ran;
      if (progress->done == progress->total) progress->cv.notify_all();
    }
  };
  const int64_t helpers = std::min(threads, progress->total) - 1;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([drain] { drain(); });
  drain();
  std::unique_lock<std::mutex> lock(progress->mu);
  progress->cv.wait(lock, [&] { return progress->done == progress->total; });
}

}  // namespace lpnum

#endif  // LPNUM_NATIVE_SLABS_H_
