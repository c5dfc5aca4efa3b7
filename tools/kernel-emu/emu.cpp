// emu.cpp — the scheduler behind emu.h (see its header comment for what is and is not modelled).
// Built together with one generated kernel translation unit into a shared library that the Python
// drivers load with ctypes; the C API is at the bottom.
#include "emu.h"

#include <sys/mman.h>
#include <cstdarg>
#include <ucontext.h>

#include <map>
#include <random>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <dlfcn.h>
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif

EmuDim threadIdx, blockIdx, gridDim, blockDim;
void* emu_smem_ptr = nullptr;

namespace {

constexpr uint32_t FULL = 0xffffffffu;
constexpr size_t STACK = 1 << 19;  // per thread; mapped lazily, so untouched pages cost nothing
constexpr unsigned MAX_THREADS = 1024;

enum State { RUNNING, WAITING, DONE };
struct Thread {
  State st;
  int kind, site, arg;
  uint32_t mask, val, res;
};

struct Kernel {
  size_t params_size;
  EmuThunk thunk;
};
std::map<std::string, Kernel>& registry() {
  static std::map<std::string, Kernel> r;
  return r;
}

std::vector<Thread> th;
std::vector<ucontext_t> ctx;
ucontext_t sched_ctx;
char* stacks = nullptr;
int cur = 0;
std::function<void()>* cur_fn = nullptr;
const char* cur_kernel = "";
long n_errors = 0, n_barriers = 0, n_warp_collectives = 0;
bool quiet = false;
#ifdef EMU_ASAN
const void* sched_stack_bottom = nullptr;
size_t sched_stack_size = 0;
#endif

void error(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
void error(const char* fmt, ...) {
  if (!quiet && n_errors < 20) {
    fprintf(stderr, "emu ERROR %s block %u: ", cur_kernel, blockIdx.x);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
  }
  n_errors++;
}

// Context switches. With ASan the fibre switches are annotated so that it tracks the stacks, and
// libc's swapcontext is called directly: ASan's interceptor would release the shadow of the whole
// target stack on every switch (a syscall each time, minutes over a run).
#ifdef EMU_ASAN
int swap(ucontext_t* from, ucontext_t* to) {
  using Fn = int (*)(ucontext_t*, const ucontext_t*);
  static Fn real = [] {
    void* libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    return libc ? (Fn)dlsym(libc, "swapcontext") : nullptr;
  }();
  return real ? real(from, to) : swapcontext(from, to);
}
#else
int swap(ucontext_t* from, ucontext_t* to) { return swapcontext(from, to); }
#endif

void to_thread(int t) {
#ifdef EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, stacks + (size_t)t * STACK, STACK);
#endif
  swap(&sched_ctx, &ctx[t]);
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
}

void to_scheduler(int me, bool exiting) {
#ifdef EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, sched_stack_bottom, sched_stack_size);
#else
  (void)exiting;
#endif
  swap(&ctx[me], &sched_ctx);
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &sched_stack_bottom, &sched_stack_size);
#endif
}

void thread_entry() {
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &sched_stack_bottom, &sched_stack_size);
#endif
  (*cur_fn)();
  th[cur].st = DONE;
  to_scheduler(cur, true);
}

const char* kind_name(int k) {
  static const char* names[] = {"__syncwarp", "__shfl_sync", "__shfl_xor_sync", "__shfl_down_sync", "__shfl_up_sync",
                                "__any_sync", "__all_sync", "__ballot_sync", "__syncthreads"};
  return k >= 0 && k <= EMU_BARRIER ? names[k] : "?";
}

// Completes the collective of warp [lo, hi) if every live lane waits at one; returns whether it did.
bool complete_warp(int lo, int hi) {
  int live = 0, at = 0, first = -1;
  for (int t = lo; t < hi; ++t) {
    if (th[t].st != DONE) live++;
    if (th[t].st == WAITING && th[t].kind != EMU_BARRIER) {
      at++;
      if (first < 0) first = t;
    }
  }
  if (at == 0 || at != live) return false;
  const Thread& f = th[first];
  const int warp = lo / 32;
  if (live != 32)
    error("%s at line %d: %d of 32 lanes of warp %d take part (exited or missing lanes; full mask required)",
          kind_name(f.kind), f.site, live, warp);
  for (int t = lo; t < hi; ++t) {
    const Thread& x = th[t];
    if (x.st != WAITING) continue;
    if (x.site != f.site || x.kind != f.kind) {
      error("divergent warp collective in warp %d: lane %d at %s line %d, lane %d at %s line %d", warp, t - lo,
            kind_name(x.kind), x.site, first - lo, kind_name(f.kind), f.site);
      break;
    }
    if (x.mask != FULL) {
      error("%s at line %d with mask 0x%08x: only full-mask collectives are modelled", kind_name(x.kind), x.site, x.mask);
      break;
    }
  }
  uint32_t ballot = 0;
  bool all = true;
  for (int t = lo; t < hi; ++t)
    if (th[t].st == WAITING) {
      if (th[t].val) ballot |= 1u << (t - lo);
      else all = false;
    }
  auto value_of = [&](int lane, int self) { return lo + lane < hi && th[lo + lane].st == WAITING ? th[lo + lane].val : th[self].val; };
  for (int t = lo; t < hi; ++t) {
    Thread& x = th[t];
    if (x.st != WAITING) continue;
    const int lane = t - lo;
    switch (x.kind) {
      case EMU_SYNCWARP: x.res = 0; break;
      case EMU_ANY: x.res = ballot != 0; break;
      case EMU_ALL: x.res = all; break;
      case EMU_BALLOT: x.res = ballot; break;
      case EMU_SHFL: x.res = value_of(x.arg & 31, t); break;  // CUDA: srcLane modulo width
      case EMU_SHFL_XOR: x.res = (lane ^ x.arg) < 32 ? value_of(lane ^ x.arg, t) : x.val; break;
      case EMU_SHFL_DOWN: x.res = lane + x.arg < 32 ? value_of(lane + x.arg, t) : x.val; break;
      case EMU_SHFL_UP: x.res = lane - x.arg >= 0 ? value_of(lane - x.arg, t) : x.val; break;
    }
  }
  for (int t = lo; t < hi; ++t)
    if (th[t].st == WAITING) th[t].st = RUNNING;  // after every result is formed
  n_warp_collectives++;
  return true;
}

// Runs warp [lo, hi)'s runnable lanes until each waits or exits, then completes its collective if
// it can; with run_ahead, repeats until the warp is stuck (at __syncthreads, at a collective other
// lanes have not reached, or done). Returns whether anything happened.
bool advance_warp(int lo, int hi, int order, bool run_ahead, std::mt19937& rng) {
  int lanes[32];
  const int nl = hi - lo;
  bool any = false;
  for (;;) {
    for (int i = 0; i < nl; ++i) lanes[i] = lo + i;
    if (order == 1) std::reverse(lanes, lanes + nl);
    if (order == 2) std::shuffle(lanes, lanes + nl, rng);
    for (int i = 0; i < nl; ++i) {
      const int t = lanes[i];
      if (th[t].st != RUNNING) continue;
      cur = t;
      threadIdx.x = (unsigned)t;
      to_thread(t);
      any = true;
    }
    if (!complete_warp(lo, hi)) return any;
    any = true;
    if (!run_ahead) return true;
  }
}

// Thread orders: 0 forward and 1 reverse let each warp run ahead as far as it can (ascending or
// descending warps, and lanes within a warp), so a warp reads what a later (earlier) warp has not
// yet written unless a __syncthreads separates them; 2 advances the warps one collective at a time
// in a fresh random warp and lane order each time.
void run_block(std::function<void()>& fn, unsigned nthreads, int order, std::mt19937& rng) {
  th.assign(nthreads, Thread{RUNNING, 0, 0, 0, FULL, 0, 0});
  ctx.resize(nthreads);
  cur_fn = &fn;
  for (unsigned t = 0; t < nthreads; ++t) {
    getcontext(&ctx[t]);
    ctx[t].uc_stack.ss_sp = stacks + (size_t)t * STACK;
    ctx[t].uc_stack.ss_size = STACK;
    ctx[t].uc_link = nullptr;
    makecontext(&ctx[t], thread_entry, 0);
#ifdef EMU_ASAN
    __asan_unpoison_memory_region(stacks + (size_t)t * STACK, STACK);  // frames left by the last block
#endif
  }
  const int nwarps = (int)((nthreads + 31) / 32);
  std::vector<int> warps(nwarps);
  for (;;) {
    for (int w = 0; w < nwarps; ++w) warps[w] = w;
    if (order == 1) std::reverse(warps.begin(), warps.end());
    if (order == 2) std::shuffle(warps.begin(), warps.end(), rng);
    bool progress = false;
    for (int w : warps) progress |= advance_warp(32 * w, std::min(32 * w + 32, (int)nthreads), order, order != 2, rng);
    if (progress) continue;
    // Nothing can move: every live thread waits. Either all are at a barrier, or it is a deadlock.
    int live = 0, bar = 0, first = -1, exited = 0;
    for (unsigned t = 0; t < nthreads; ++t) {
      if (th[t].st == DONE) exited++;
      else live++;
      if (th[t].st == WAITING && th[t].kind == EMU_BARRIER) {
        bar++;
        if (first < 0) first = (int)t;
      }
    }
    if (live == 0) return;
    if (bar != live) {
      int w = -1;
      for (unsigned t = 0; t < nthreads && w < 0; ++t)
        if (th[t].st == WAITING && th[t].kind != EMU_BARRIER) w = (int)t;
      error("deadlock: %d live threads, %d at __syncthreads, thread %d waits at %s line %d", live, bar, w,
            kind_name(th[w].kind), th[w].site);
      return;  // the block is abandoned; its fibres are simply never resumed
    }
    if (exited) error("__syncthreads at line %d after %d of %u threads exited", th[first].site, exited, nthreads);
    for (unsigned t = 0; t < nthreads; ++t)
      if (th[t].st == WAITING && th[t].site != th[first].site) {
        error("divergent __syncthreads: thread %u at line %d, thread %d at line %d", t, th[t].site, first, th[first].site);
        break;
      }
    for (unsigned t = 0; t < nthreads; ++t)
      if (th[t].st == WAITING) th[t].st = RUNNING;
    n_barriers++;
  }
}

}  // namespace

uint32_t emu_collective(int kind, int site, uint32_t mask, uint32_t value, int arg) {
  const int me = cur;
  Thread& t = th[me];
  t.st = WAITING;
  t.kind = kind;
  t.site = site;
  t.mask = mask;
  t.val = value;
  t.arg = arg;
  to_scheduler(me, false);
  return th[me].res;
}

EmuRegistrar::EmuRegistrar(const char* name, size_t params_size, EmuThunk thunk) { registry()[name] = Kernel{params_size, thunk}; }

extern "C" {

/* Size of a registered kernel's parameter struct, or -1 if there is no such kernel. */
long emu_params_size(const char* name) {
  auto it = registry().find(name);
  return it == registry().end() ? -1 : (long)it->second.params_size;
}

/* Runs kernel `name` on grid x block threads with `smem_bytes` of dynamic shared memory.
 * order: 0 forward, 1 reverse, 2 random (seeded) — for the blocks and for the threads within a
 * block. Returns the number of errors the emulator reported during this launch, or -1 for an
 * unknown kernel, -2 for a parameter size that differs from the C struct, -3 for a bad shape. */
long emu_launch(const char* name, const void* params, size_t params_size, unsigned grid, unsigned block,
                size_t smem_bytes, int order, unsigned seed) {
  auto it = registry().find(name);
  if (it == registry().end()) return -1;
  if (params_size != it->second.params_size) return -2;
  if (grid == 0 || block == 0 || block > MAX_THREADS || order < 0 || order > 2) return -3;
  if (!stacks) {
    void* p = mmap(nullptr, (size_t)MAX_THREADS * STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return -3;
    stacks = (char*)p;
  }
  const long errors_before = n_errors;
  cur_kernel = it->first.c_str();
  std::function<void()> fn = it->second.thunk(params);
  gridDim.x = grid;
  blockDim.x = block;
  std::mt19937 rng(seed);
  std::vector<unsigned> blocks(grid);
  for (unsigned b = 0; b < grid; ++b) blocks[b] = b;
  if (order == 1) std::reverse(blocks.begin(), blocks.end());
  if (order == 2) std::shuffle(blocks.begin(), blocks.end(), rng);
  for (unsigned b : blocks) {
    float* smem = smem_bytes ? (float*)malloc(smem_bytes) : nullptr;  // exactly the launch's size
    const uint32_t poison = 0x7fc00123u;                              // a quiet NaN
    for (size_t i = 0; i < smem_bytes / 4; ++i) memcpy(&smem[i], &poison, 4);
    emu_smem_ptr = smem;
    blockIdx.x = b;
    run_block(fn, block, order, rng);
    free(smem);
  }
  emu_smem_ptr = nullptr;
  return n_errors - errors_before;
}

long emu_total_errors() { return n_errors; }
long emu_barriers() { return n_barriers; }
long emu_warp_collectives() { return n_warp_collectives; }
/* 1: do not print error messages (the self-test provokes errors on purpose). */
void emu_set_quiet(int q) { quiet = q != 0; }
/* Device-like buffers: exact-size allocations (so the ASan build sees their bounds), aligned to
 * 256 bytes like the crate's arena (float4 paths need 16). */
void* emu_alloc(size_t bytes) {
  void* p = nullptr;
  return posix_memalign(&p, 256, bytes ? bytes : 1) == 0 ? p : nullptr;
}
void emu_free(void* p) { free(p); }
}
