// fiber_runtime.h — runs CUDA blocks on the CPU: every CUDA thread of a block is a fiber, all fibers of
// a block share one OS thread, and __syncthreads() is a cooperative context switch.
//
// Included ONCE, by the wrapper the emulator generates for one kernel source (see __init__.py: _WRAPPER),
// after that source; the wrapper then defines gpuemu_entries[] (one per name expression), which the
// exported C functions at the end of this file serve to Python.
//
// ---- Scheduling: passes -----------------------------------------------------------------------------
// A block starts with all its threads NEW, in thread-index order (reversed with reverse_threads). A *pass*
// runs each thread of the pass in turn until it returns or arrives at __syncthreads(). When a pass has
// been through every thread, every live thread waits at a barrier, so that barrier is complete: the next
// pass runs the waiting threads again, in the same order, from where they stopped. Threads that returned
// are dropped: they never hold a barrier up (CUDA's rule since Volta: a barrier waits for the non-exited
// threads of the block). Waiting at *different* __syncthreads() calls is reported as an error.
//
// ---- Stacks: a thread gets one only when it needs one ----------------------------------------------
// A *runner* is a loop (runner_loop) that takes the next thread of the pass and, if it is NEW, simply
// CALLS the kernel for it on the runner's own stack. A thread that returns without meeting a barrier
// therefore costs one function call and no context switch at all (most elementwise kernels). A thread
// that arrives at a barrier keeps the stack it is running on (its frames are there) and hands the OS
// thread on: directly to the next thread of the pass if that one is suspended too (one switch), or to a
// fresh runner started on a free stack if the next thread is NEW. When a suspended thread is resumed and
// finally returns, it returns into the runner loop that originally called it, which carries on.
// The launch's own OS-thread stack hosts the *root* runner; the block ends there.
//
// ---- Context switch --------------------------------------------------------------------------------
// A hand-written x86-64 SysV switch (pushes the six callee-saved integer registers, swaps the stack
// pointer, pops, returns) — an order of magnitude cheaper than swapcontext, which also saves the FP
// environment and makes a sigprocmask system call. MXCSR / the x87 control word are NOT switched: kernels
// never change the rounding mode. -DGPUCONV_EMU_UCONTEXT=1 (or a non-x86-64 machine) selects the portable
// ucontext fallback. Under -fsanitize=address each switch is bracketed by
// __sanitizer_start_switch_fiber / __sanitizer_finish_switch_fiber so that ASan knows which stack is live.
#pragma once

// (The system headers this file needs are included by cuda_compat.h, before its CUDA macros.)

#if defined(__x86_64__) && !defined(GPUCONV_EMU_UCONTEXT)
#define GPUEMU_ASM_SWITCH 1
#define GPUEMU_SWITCH_NAME "asm"
#else
#define GPUEMU_ASM_SWITCH 0
#define GPUEMU_SWITCH_NAME "ucontext"
#endif

#if defined(__SANITIZE_ADDRESS__)
#define GPUEMU_ASAN 1
#define GPUEMU_ASAN_NAME "1"
#else
#define GPUEMU_ASAN 0
#define GPUEMU_ASAN_NAME "0"
#endif

#define GPUEMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace gpuemu {

struct Stack;
extern "C" void gpuemu_runner_main(Stack* s);

// ---------------------------------------------------------------------------------------------------
// Context switching
// ---------------------------------------------------------------------------------------------------
#if GPUEMU_ASM_SWITCH
// gpuemu_switch(save, load): push the callee-saved registers on the current stack, store the stack
// pointer in *save, make `load` the stack pointer, pop the registers saved there and `ret` into the code
// that once switched away from that stack. Caller-saved registers need no saving: the C++ caller already
// treats them as clobbered by a call. Being an opaque external call it is also a full compiler barrier:
// values of shared memory cached in registers are re-read after __syncthreads().
extern "C" void gpuemu_switch(void** save_sp, void* load_sp);
// A fresh runner's first `ret` lands here, with its Stack* in r12 (see Context::init).
extern "C" void gpuemu_trampoline();
asm(R"(
    .text
    .p2align 4
    .globl gpuemu_switch
    .hidden gpuemu_switch
    .type gpuemu_switch,@function
gpuemu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size gpuemu_switch,.-gpuemu_switch

    .p2align 4
    .globl gpuemu_trampoline
    .hidden gpuemu_trampoline
    .type gpuemu_trampoline,@function
gpuemu_trampoline:
    movq %r12, %rdi
    call gpuemu_runner_main@PLT
    ud2
    .size gpuemu_trampoline,.-gpuemu_trampoline
)");
#endif

struct Context {
#if GPUEMU_ASM_SWITCH
    void* sp = nullptr;
#else
    ucontext_t uc;
#endif
#if GPUEMU_ASAN
    void* fake_stack = nullptr;      // ASan's fake stack of this context while it is switched out
    const void* stack_lo = nullptr;  // the stack this context runs on
    size_t stack_size = 0;
#endif

#if !GPUEMU_ASM_SWITCH
    static void uc_entry(unsigned int hi, unsigned int lo) {
        gpuemu_runner_main(reinterpret_cast<Stack*>((static_cast<uintptr_t>(hi) << 32) | lo));
        __builtin_trap();
    }
#endif

    // Make this context start gpuemu_runner_main(s) on the stack [lo, top) when switched to.
    void init(char* lo, char* top, Stack* s) {
#if GPUEMU_ASAN
        stack_lo = lo;
        stack_size = static_cast<size_t>(top - lo);
        fake_stack = nullptr;
        // Frames abandoned on this stack earlier may still be poisoned.
        ASAN_UNPOISON_MEMORY_REGION(lo, static_cast<size_t>(top - lo));
#endif
#if GPUEMU_ASM_SWITCH
        (void)lo;
        // The frame gpuemu_switch pops: r15 r14 r13 r12 rbx rbp, then the return address. `top` is 16-byte
        // aligned; sp = top - 72 leaves rsp == top - 16 (16-byte aligned) after the `ret` into the
        // trampoline, whose `call` then gives the callee the ABI's entry alignment.
        void** f = reinterpret_cast<void**>(top - 72);
        f[0] = f[1] = f[2] = nullptr;  // r15 r14 r13
        f[3] = s;                      // r12: the trampoline's argument
        f[4] = f[5] = nullptr;         // rbx, rbp (0 ends debugger backtraces)
        f[6] = reinterpret_cast<void*>(&gpuemu_trampoline);
        f[7] = f[8] = nullptr;
        sp = f;
#else
        getcontext(&uc);
        uc.uc_stack.ss_sp = lo;
        uc.uc_stack.ss_size = static_cast<size_t>(top - lo);
        uc.uc_link = nullptr;
        uintptr_t p = reinterpret_cast<uintptr_t>(s);
        makecontext(&uc, reinterpret_cast<void (*)()>(&uc_entry), 2, static_cast<unsigned int>(p >> 32),
                    static_cast<unsigned int>(p & 0xffffffffu));
#endif
    }
};

// ---------------------------------------------------------------------------------------------------
// Threads, stacks, workers, launches
// ---------------------------------------------------------------------------------------------------
enum FiberState { NEW, RUNNING, AT_BARRIER, DONE };

struct Fiber {                        // one CUDA thread of the current block
    ThreadView view;                  // its threadIdx (first member: w->cur points here)
    Context ctx;                      // where it stopped, while AT_BARRIER
    int state = DONE;
    const char* site_file = nullptr;  // the __syncthreads() it waits at
    int site_line = 0;
    int pred = 0;                     // predicate of __syncthreads_count/and/or
};
static_assert(offsetof(Fiber, view) == 0, "ThreadView must be the first member of Fiber");
inline Fiber* fiber_of(ThreadView* v) { return reinterpret_cast<Fiber*>(v); }

struct Stack {                        // an mmap'ed stack for runners (and the threads they call)
    char* map = nullptr;
    size_t map_size = 0;
    char* lo = nullptr;               // usable [lo, top); a PROT_NONE guard page lies below lo
    char* top = nullptr;
    Context ctx;                      // a fresh runner's start context
};

struct Launch {
    void (*invoke)(void (*)(), void**);
    void (*fp)();
    void** args;
    dim3 grid, block;
    size_t shared_bytes;
    bool reverse, poison;
    unsigned long long nblocks;
    std::atomic<unsigned long long> next_block{0};
    std::atomic<bool> failed{false};
    std::mutex err_mu;
    std::string err;

    void fail(const std::string& msg) {
        std::lock_guard<std::mutex> g(err_mu);
        if (err.empty()) err = msg;
        failed = true;
    }
};

static size_t stack_bytes() {
    static const size_t v = [] {
        const char* e = getenv("GPUCONV_EMU_STACK_KB");
        long kb = e ? atol(e) : (GPUEMU_ASAN ? 256 : 64);
        if (kb < 16) kb = 16;
        return static_cast<size_t>(kb) * 1024;
    }();
    return v;
}

// One per OS thread that runs blocks, kept for the life of that thread (found through a pthread key, not
// a thread_local: this module's TLS block is overwritten by the shared-memory poisoning), so stacks are
// mmap'ed once and reused by every block of every launch.
struct Worker : BlockView {
    std::vector<Fiber> fibers;        // fibers[i] plays linear thread index i
    std::vector<Fiber*> pass;         // the threads of the current pass, in run order
    std::vector<Fiber*> next_pass;
    size_t pass_pos = 0;
    bool block_done = false;
    Fiber* pending = nullptr;         // the NEW thread a fresh runner must start with
    std::vector<Stack*> stacks;       // all stacks of this worker
    std::vector<Stack*> free_stacks;
    Context root;                     // the root runner (launch's own stack), while it is switched out
    Context discard;                  // save slot for contexts that are never resumed
    Launch* launch = nullptr;
    void* dyn = nullptr;              // dynamic shared memory of the launch (exactly shared_bytes)
    size_t dyn_bytes = 0;
    bool failed = false;
    std::string err;
    std::string last_error;           // of the last launch made from this OS thread (for Python)
    void* trap_jb[5];                 // __builtin_setjmp buffer in run_block, on the root stack
    // This module's TLS block in this thread (it holds every static __shared__ array), for poisoning.
    char* tls_lo = nullptr;
    size_t tls_size = 0;
    bool tls_probed = false;
#if GPUEMU_ASAN
    const void* cur_lo = nullptr;     // bounds of the stack running right now
    size_t cur_size = 0;
    const void* root_lo = nullptr;
    size_t root_size = 0;
#endif

    Stack* take_stack() {
        if (free_stacks.empty()) {
            const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
            Stack* s = new Stack();
            s->map_size = stack_bytes() + page;
            void* m = mmap(nullptr, s->map_size, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
            if (m == MAP_FAILED) {
                delete s;
                return nullptr;
            }
            s->map = static_cast<char*>(m);
            mprotect(s->map, page, PROT_NONE);  // guard page: an overflow faults instead of corrupting
            s->lo = s->map + page;
            // Stagger the tops by cache lines so the hot top frames of many stacks do not all land in
            // the same L1 sets.
            s->top = s->map + s->map_size - 64 * (stacks.size() % 64);
            stacks.push_back(s);
            return s;
        }
        Stack* s = free_stacks.back();
        free_stacks.pop_back();
        return s;
    }
};

static pthread_key_t worker_key;
static pthread_once_t worker_key_once = PTHREAD_ONCE_INIT;

static void destroy_worker(void* p) {  // at the exit of an OS thread that launched kernels
    Worker* w = static_cast<Worker*>(p);
    for (Stack* s : w->stacks) {
        munmap(s->map, s->map_size);
        delete s;
    }
    delete w;
}

static Worker* this_worker() {
    pthread_once(&worker_key_once, [] { pthread_key_create(&worker_key, &destroy_worker); });
    Worker* w = static_cast<Worker*>(pthread_getspecific(worker_key));
    if (!w) {
        w = new Worker();
        pthread_setspecific(worker_key, w);
    }
    return w;
}

// Switch from the running context to `to`, saving the current one in `from` (never resumed when
// `from_dies`: then ASan may drop its fake stack). Returns when someone switches back to `from`.
__attribute__((always_inline)) inline void switch_context(Worker* w, Context* from, Context* to, bool from_dies) {
#if GPUEMU_ASAN
    from->stack_lo = w->cur_lo;
    from->stack_size = w->cur_size;
    w->cur_lo = to->stack_lo;
    w->cur_size = to->stack_size;
    __sanitizer_start_switch_fiber(from_dies ? nullptr : &from->fake_stack, to->stack_lo, to->stack_size);
#else
    (void)w;
    (void)from_dies;
#endif
#if GPUEMU_ASM_SWITCH
    gpuemu_switch(&from->sp, to->sp);
#else
    swapcontext(&from->uc, &to->uc);
#endif
#if GPUEMU_ASAN
    // Running on `from`'s stack again: give ASan back its fake stack.
    __sanitizer_finish_switch_fiber(from->fake_stack, nullptr, nullptr);
#endif
}

static std::string where(const Worker* w, const Fiber* f) {
    char buf[160];
    snprintf(buf, sizeof buf, "block (%u,%u,%u) thread (%u,%u,%u)", w->block_idx.x, w->block_idx.y,
             w->block_idx.z, f->view.thread_idx.x, f->view.thread_idx.y, f->view.thread_idx.z);
    return buf;
}

// Abandon the block from anywhere (any stack): jump back to run_block's frame on the root stack. The
// frames above it, on every stack, are simply dropped (kernels hold no resources).
[[noreturn]] static void abort_block(Worker* w, const std::string& msg) {
    w->failed = true;
    w->err = msg;
#if GPUEMU_ASAN
    __sanitizer_start_switch_fiber(nullptr, w->root_lo, w->root_size);
#endif
    __builtin_longjmp(w->trap_jb, 1);
}

// End of a pass: every live thread waits at a barrier. Check it is the same barrier for all, then start
// the next pass with them. Returns its first thread, or nullptr when the block is done.
__attribute__((noinline)) static Fiber* end_of_pass(Worker* w) {
    for (;;) {
        if (w->pass_pos < w->pass.size()) return w->pass[w->pass_pos++];
        if (w->block_done) return nullptr;
        w->next_pass.clear();
        const Fiber* first = nullptr;
        int count = 0;
        for (Fiber* f : w->pass) {
            if (f->state != AT_BARRIER) continue;
            if (!first) {
                first = f;
            } else if (f->site_line != first->site_line ||
                       (f->site_file != first->site_file && std::strcmp(f->site_file, first->site_file) != 0)) {
                abort_block(w, "divergent __syncthreads(): " + where(w, first) + " waits at " + first->site_file +
                                   ":" + std::to_string(first->site_line) + " but " + where(w, f) + " waits at " +
                                   f->site_file + ":" + std::to_string(f->site_line));
            }
            count += f->pred;
            w->next_pass.push_back(f);
        }
        w->sync_count = count;
        w->sync_live = static_cast<int>(w->next_pass.size());
        std::swap(w->pass, w->next_pass);
        w->pass_pos = 0;
        if (w->pass.empty()) w->block_done = true;
    }
}

// The next thread to run, or nullptr when the block is done.
__attribute__((always_inline)) inline Fiber* next_in_pass(Worker* w) {
    if (w->pass_pos < w->pass.size()) return w->pass[w->pass_pos++];
    return end_of_pass(w);
}

// A runner: runs the threads of the pass on stack `my` (nullptr: the root stack), starting with `f` if
// given. Returns only on the root stack, when the block is done.
static void runner_loop(Worker* w, Stack* my, Fiber* f) {
    Launch* L = w->launch;
    for (;;) {
        if (!f) f = next_in_pass(w);
        if (!f) {  // block done
            if (!my) return;
            // The root runner is switched out (it resumed a thread earlier): hand the OS thread back to it.
            w->free_stacks.push_back(my);
            switch_context(w, &w->discard, &w->root, true);
            __builtin_unreachable();
        }
        w->cur = &f->view;
        if (f->state == NEW) {
            // The CUDA thread's whole life, as a plain call on this stack. If it meets a barrier, this stack
            // becomes its own until it returns here.
            f->state = RUNNING;
            L->invoke(L->fp, L->args);
            f->state = DONE;
            f = nullptr;
            continue;
        }
        // f waits at a barrier: resume it where it stopped. The root runner keeps its context, because the
        // block has to end on the root stack (the launch's frames are below it); it is switched back to
        // only when the block is done. Any other runner is finished for good: nobody ever switches back
        // to it (a resumed thread that meets the next barrier hands over to the next thread or to a fresh
        // runner; one that returns, returns into the runner that first called it), so its stack is free
        // as soon as we are off it.
        if (!my) {
            switch_context(w, &w->root, &f->ctx, false);
            f = nullptr;  // resumed: the block is done
            continue;
        }
        w->free_stacks.push_back(my);
        switch_context(w, &w->discard, &f->ctx, true);
        __builtin_unreachable();
    }
}

extern "C" __attribute__((used, visibility("hidden"))) void gpuemu_runner_main(Stack* s) {
#if GPUEMU_ASAN
    // First instructions on a fresh stack: complete the switch that started us (no fake stack yet).
    __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
#endif
    Worker* w = static_cast<Worker*>(t_view);
    Fiber* f = w->pending;
    w->pending = nullptr;
    runner_loop(w, s, f);  // never returns on a non-root stack
    __builtin_trap();
}

// __syncthreads(): arrive, and hand the OS thread to the rest of the pass. We are resumed (returning
// from the switch below) only in the next pass, which starts only once every live thread of the block
// has arrived at a barrier or returned.
// noipa: every caller must treat __syncthreads() as an opaque call that may read and write any memory,
// so values of shared memory kept in registers are re-read after it, whatever GCC learns about this body.
__attribute__((noinline, noipa)) void barrier(const char* file, int line, int pred) {
    asm volatile("" ::: "memory");
    Worker* w = static_cast<Worker*>(t_view);
    if (!w || !w->cur) trap("__syncthreads() outside a kernel launch", file, line);
    Fiber* me = fiber_of(w->cur);
    me->state = AT_BARRIER;
    me->site_file = file;
    me->site_line = line;
    me->pred = pred;
    Fiber* nx = next_in_pass(w);  // not null: at least we are live
    if (nx != me) {
        w->cur = &nx->view;
        if (nx->state == AT_BARRIER) {
            // Straight to the next waiting thread: one switch per thread per barrier.
            switch_context(w, &me->ctx, &nx->ctx, false);
        } else {
            // The next thread is NEW: it needs a runner, on a free stack (ours is taken by our frames).
            Stack* s = w->take_stack();
            if (!s) abort_block(w, "out of memory for fiber stacks");
            s->ctx.init(s->lo, s->top, s);
            w->pending = nx;
            switch_context(w, &me->ctx, &s->ctx, false);
        }
        // Resumed by whoever switched to us; they set w->cur to us.
    }
    me->state = RUNNING;
    asm volatile("" ::: "memory");
}

// __trap(), a failed assert(): abort the launch with a message for Python.
[[noreturn]] void trap(const char* what, const char* file, int line) {
    Worker* w = static_cast<Worker*>(t_view);
    char buf[512];
    snprintf(buf, sizeof buf, "%s at %s:%d", what, file, line);
    if (!w || !w->cur) {
        fprintf(stderr, "gpuconv emulator: %s (outside a kernel launch)\n", buf);
        abort();
    }
    abort_block(w, std::string(buf) + " in " + where(w, fiber_of(w->cur)));
}

void* dynamic_shared() {
    Worker* w = static_cast<Worker*>(t_view);
    return w ? w->dyn : nullptr;
}

// ---------------------------------------------------------------------------------------------------
// Shared-memory poisoning
// ---------------------------------------------------------------------------------------------------
// Find this thread's instance of this module's PT_TLS segment (dlpi_tls_data) containing t_view.
struct TlsProbe { const char* needle; char* lo; size_t size; };
static int tls_probe_cb(struct dl_phdr_info* info, size_t, void* data) {
    TlsProbe* p = static_cast<TlsProbe*>(data);
    if (!info->dlpi_tls_data) return 0;
    for (int i = 0; i < info->dlpi_phnum; ++i) {
        if (info->dlpi_phdr[i].p_type != PT_TLS) continue;
        char* lo = static_cast<char*>(info->dlpi_tls_data);
        size_t size = info->dlpi_phdr[i].p_memsz;
        if (p->needle >= lo && p->needle < lo + size) {
            p->lo = lo;
            p->size = size;
            return 1;
        }
    }
    return 0;
}

// Before every block: fill the dynamic shared buffer and every static __shared__ array with 0xFF bytes
// (NaN for float/double/half, -1 for integers), so a kernel that reads shared memory before writing it
// gets garbage instead of the previous block's values. Static __shared__ arrays are thread_local, and all
// thread_local data of this module lives in one TLS block per OS thread; t_view is the runtime's only
// thread_local, so it is saved around the fill. (Kernel sources must not declare thread_local data of
// their own: it would be poisoned too.) If the TLS block cannot be located, only the dynamic buffer is
// filled.
static void poison_shared(Worker* w) {
    if (w->dyn_bytes) std::memset(w->dyn, 0xFF, w->dyn_bytes);
    if (!w->tls_probed) {
        w->tls_probed = true;
        TlsProbe p{reinterpret_cast<const char*>(&t_view), nullptr, 0};
        dl_iterate_phdr(tls_probe_cb, &p);
        w->tls_lo = p.lo;
        w->tls_size = p.size;
    }
    if (w->tls_lo) {
        BlockView* saved = t_view;
        std::memset(w->tls_lo, 0xFF, w->tls_size);
        t_view = saved;
    }
}

// ---------------------------------------------------------------------------------------------------
// Blocks and launches
// ---------------------------------------------------------------------------------------------------
// __builtin_setjmp needs a frame of its own that stays live while the block runs: this one.
__attribute__((noinline)) static bool run_block_guarded(Worker* w) {
    if (__builtin_setjmp(w->trap_jb)) {
#if GPUEMU_ASAN
        __sanitizer_finish_switch_fiber(nullptr, nullptr, nullptr);
        w->cur_lo = w->root_lo;
        w->cur_size = w->root_size;
        // The jump skipped the epilogues of the frames it dropped from this stack, which left their
        // redzones poisoned: clear everything below this frame (a plain longjmp does the same through
        // __asan_handle_no_return).
        char* here = static_cast<char*>(__builtin_frame_address(0));
        char* lo = static_cast<char*>(const_cast<void*>(w->root_lo));
        if (here - lo > (1 << 20) || here < lo) lo = here - (1 << 20);
        ASAN_UNPOISON_MEMORY_REGION(lo, static_cast<size_t>(here - lo));
#endif
        return false;  // abort_block() jumped here from some fiber
    }
    runner_loop(w, nullptr, nullptr);
    return true;
}

static void run_block(Worker* w, Launch* L) {
    const size_t n = static_cast<size_t>(L->block.x) * L->block.y * L->block.z;
    if (L->poison) poison_shared(w);
    w->pass.resize(n);
    uint3 idx{0, 0, 0};  // thread index of linear thread t, counted up (no divisions)
    for (size_t t = 0; t < n; ++t) {
        Fiber* f = &w->fibers[t];
        f->view.thread_idx = idx;
        f->state = NEW;
        w->pass[L->reverse ? n - 1 - t : t] = f;
        if (++idx.x == L->block.x) {
            idx.x = 0;
            if (++idx.y == L->block.y) {
                idx.y = 0;
                ++idx.z;
            }
        }
    }
    w->pass_pos = 0;
    w->block_done = false;
    if (w->free_stacks.size() != w->stacks.size()) w->free_stacks = w->stacks;  // after an aborted block
    if (!run_block_guarded(w)) w->cur = nullptr;
}

static void run_blocks(Worker* w, Launch* L) {
    const unsigned long long gx = L->grid.x, gy = L->grid.y;
    const size_t n = static_cast<size_t>(L->block.x) * L->block.y * L->block.z;
    w->launch = L;
    w->failed = false;
    w->err.clear();
    w->block_dim = L->block;
    w->grid_dim = L->grid;
    if (w->fibers.size() < n) w->fibers.resize(n);
    w->pass.reserve(n);
    w->next_pass.reserve(n);
    w->dyn_bytes = L->shared_bytes;
    // Exactly shared_bytes (ASan then flags any access past the end); 64-byte aligned.
    if (posix_memalign(&w->dyn, 64, L->shared_bytes ? L->shared_bytes : 1) != 0) {
        L->fail("out of memory for dynamic shared memory");
        return;
    }
#if GPUEMU_ASAN
    if (!w->root_lo) {  // the OS thread's own stack: where the root runner lives
        pthread_attr_t a;
        void* lo = nullptr;
        size_t sz = 0;
        if (pthread_getattr_np(pthread_self(), &a) == 0) {
            pthread_attr_getstack(&a, &lo, &sz);
            pthread_attr_destroy(&a);
        }
        w->root_lo = lo;
        w->root_size = sz;
    }
    w->cur_lo = w->root_lo;
    w->cur_size = w->root_size;
#endif
    t_view = w;
    for (;;) {
        if (L->failed.load(std::memory_order_relaxed)) break;
        unsigned long long b = L->next_block.fetch_add(1, std::memory_order_relaxed);
        if (b >= L->nblocks) break;
        w->block_idx = uint3{static_cast<unsigned>(b % gx), static_cast<unsigned>((b / gx) % gy),
                             static_cast<unsigned>(b / (gx * gy))};
        run_block(w, L);
        if (w->failed) {
            L->fail(w->err);
            break;
        }
    }
    t_view = nullptr;
    w->cur = nullptr;
    w->launch = nullptr;
    free(w->dyn);
    w->dyn = nullptr;
    w->dyn_bytes = 0;
}

// Helper OS threads for GPUCONV_EMU_WORKERS > 1 (created on first use, kept for the process). Blocks are
// handed out through Launch::next_block; each helper has its own Worker (stacks, TLS shared memory).
struct Pool {
    std::mutex launch_mu;  // one multi-worker launch at a time per module
    std::mutex mu;
    std::condition_variable cv, done_cv;
    int nthreads = 0;
    Launch* job = nullptr;
    unsigned long long generation = 0;
    int wanted = 0;   // helpers taking part in the current job
    int pending = 0;  // helpers still running it

    void helper(int index) {
        unsigned long long seen = 0;
        for (;;) {
            Launch* L;
            {
                std::unique_lock<std::mutex> g(mu);
                cv.wait(g, [&] { return generation != seen; });
                seen = generation;
                if (index >= wanted) continue;
                L = job;
            }
            run_blocks(this_worker(), L);
            std::lock_guard<std::mutex> g(mu);
            if (--pending == 0) done_cv.notify_all();
        }
    }

    void run(Launch* L, int helpers) {
        std::lock_guard<std::mutex> lg(launch_mu);
        {
            std::lock_guard<std::mutex> g(mu);
            while (nthreads < helpers) {
                int index = nthreads++;
                std::thread([this, index] { helper(index); }).detach();
            }
            job = L;
            wanted = helpers;
            pending = helpers;
            ++generation;
        }
        cv.notify_all();
        run_blocks(this_worker(), L);  // the calling thread is worker 0
        std::unique_lock<std::mutex> g(mu);
        done_cv.wait(g, [&] { return pending == 0; });
    }
};

static Pool& pool() {
    static Pool* p = new Pool();  // never destroyed: detached helpers outlive static destructors
    return *p;
}

// ---------------------------------------------------------------------------------------------------
// Kernel descriptions from the compiler: the wrapper takes &name_expression, and describe() deduces the
// parameter types A... from the function pointer's type.
// ---------------------------------------------------------------------------------------------------
struct ParamInfo {          // mirrored by _ParamInfo in __init__.py
    int size;               // sizeof(A)
    int is_pointer;
    int is_float;           // float, double, __half (_Float16), long double
    int is_integral;        // integers, char, bool, enums
    int is_bool;
    int pointee_size;       // for pointers to arithmetic types, else 0 (void, structs, ...)
    int pointee_float;
    int pointee_integral;
    const char* type_name;  // __PRETTY_FUNCTION__ of type_name<A>(), for messages
};

template <class T> struct is_fp
    : std::integral_constant<bool, std::is_floating_point<T>::value || std::is_same<T, _Float16>::value> {};

template <class T> const char* type_name() {
    return __PRETTY_FUNCTION__;  // "const char* gpuemu::type_name() [with T = const float*]"
}

template <class T> ParamInfo param_info(const char* name) {
    // Each argument's slot starts at a multiple of 16 (gpuemu_launch), so that is the most alignment a
    // parameter may need; a struct passed by value must also be copyable as bytes (CuPy passes bytes).
    static_assert(alignof(T) <= 16, "the emulator aligns kernel parameters to at most 16 bytes");
    static_assert(std::is_trivially_copyable<T>::value, "a kernel parameter must be trivially copyable");
    using P = typename std::remove_cv<typename std::remove_pointer<T>::type>::type;
    constexpr bool ptr = std::is_pointer<T>::value;
    constexpr bool p_arith = ptr && (std::is_arithmetic<P>::value || std::is_enum<P>::value || is_fp<P>::value);
    return ParamInfo{static_cast<int>(sizeof(T)),
                     ptr,
                     is_fp<T>::value,
                     std::is_integral<T>::value || std::is_enum<T>::value,
                     std::is_same<typename std::remove_cv<T>::type, bool>::value,
                     p_arith ? static_cast<int>(sizeof(typename std::conditional<p_arith, P, char>::type)) : 0,
                     p_arith && is_fp<P>::value,
                     p_arith && (std::is_integral<P>::value || std::is_enum<P>::value),
                     name};
}

struct Entry {
    const char* name;
    int nparams;
    const ParamInfo* params;
    void (*invoke)(void (*)(), void**);
    void (*fp)();
};

template <class... A> struct Desc {
    static const ParamInfo* params() {
        static const ParamInfo p[sizeof...(A) ? sizeof...(A) : 1] = {param_info<A>(type_name<A>())...};
        return p;
    }
    template <size_t... I> static void call(void (*fp)(A...), void** args, std::index_sequence<I...>) {
        // Each CUDA thread gets its own copy of every parameter, as on the GPU.
        fp(*static_cast<typename std::remove_reference<A>::type*>(args[I])...);
    }
    static void invoke(void (*raw)(), void** args) {
        call(reinterpret_cast<void (*)(A...)>(raw), args, std::index_sequence_for<A...>{});
    }
};

template <class... A> Entry describe(const char* name, void (*fp)(A...)) {
    return Entry{name, static_cast<int>(sizeof...(A)), Desc<A...>::params(), &Desc<A...>::invoke,
                 reinterpret_cast<void (*)()>(fp)};
}

}  // namespace gpuemu

// Defined by the generated wrapper, after this header.
extern const gpuemu::Entry gpuemu_entries[];
extern const int gpuemu_nentries;

// A failing assert() inside a kernel aborts the launch (RuntimeError in Python) instead of the process:
// this definition (hidden, and -Bsymbolic) takes precedence over glibc's for every call in this module.
extern "C" void __assert_fail(const char* assertion, const char* file, unsigned int line,
                              const char* function) noexcept {
    std::string what = std::string("assert(") + assertion + ") failed in " + function;
    gpuemu::trap(what.c_str(), file, static_cast<int>(line));
}

// ---------------------------------------------------------------------------------------------------
// The C interface __init__.py uses through ctypes
// ---------------------------------------------------------------------------------------------------
GPUEMU_EXPORT int gpuemu_abi_version() { return 2; }  // _ABI in __init__.py
GPUEMU_EXPORT int gpuemu_count() { return gpuemu_nentries; }
GPUEMU_EXPORT const char* gpuemu_name(int k) { return gpuemu_entries[k].name; }
GPUEMU_EXPORT int gpuemu_nparams(int k) { return gpuemu_entries[k].nparams; }
GPUEMU_EXPORT const gpuemu::ParamInfo* gpuemu_params(int k) { return gpuemu_entries[k].params; }
GPUEMU_EXPORT const char* gpuemu_config() { return "switch=" GPUEMU_SWITCH_NAME ";asan=" GPUEMU_ASAN_NAME; }

static int env_int(const char* name, int dflt) {
    const char* v = getenv(name);  // Python's os.environ writes through putenv: changes are seen here
    return v && *v ? atoi(v) : dflt;
}

static int gpuemu_run(gpuemu::Launch& L, int workers) {
    gpuemu::Worker* self = gpuemu::this_worker();
    self->last_error.clear();
    if (gpuemu::t_view) {
        self->last_error = "kernel launch from inside a running kernel";
        return -1;
    }
    if (workers > 1 && L.nblocks > 1) {
        unsigned long long w = static_cast<unsigned long long>(workers);
        if (w > L.nblocks) w = L.nblocks;
        gpuemu::pool().run(&L, static_cast<int>(w) - 1);
    } else {
        gpuemu::run_blocks(self, &L);
    }
    if (L.failed) {
        self->last_error = L.err;
        return -1;
    }
    return 0;
}

// Run kernel k over the grid. `argbuf` holds the arguments, `argbytes` long, in slots laid out from the
// parameter sizes: parameter i starts at the sum of the previous slots, each its parameter's size rounded up
// to 16 (at least 16), so every argument is 16-byte aligned; a struct passed by value takes as many bytes as
// it needs. __init__.py's slot_layout computes the same layout, and a buffer of another length is refused.
// flags: 1 = reverse thread order. GPUCONV_EMU_WORKERS and GPUCONV_EMU_POISON are read here, per launch.
// Returns 0, or -1 with the message in gpuemu_last_error().
GPUEMU_EXPORT int gpuemu_launch(int k, unsigned int gx, unsigned int gy, unsigned int gz, unsigned int bx,
                                unsigned int by, unsigned int bz, size_t shared_bytes, const char* argbuf,
                                size_t argbytes, int flags) {
    const int n = gpuemu_entries[k].nparams;
    const gpuemu::ParamInfo* params = gpuemu_entries[k].params;
    size_t offsets_small[64];
    std::vector<size_t> offsets_big;
    size_t* offsets = offsets_small;
    if (n > 64) {
        offsets_big.resize(n);
        offsets = offsets_big.data();
    }
    size_t total = 0;
    for (int i = 0; i < n; ++i) {
        offsets[i] = total;
        const size_t size = static_cast<size_t>(params[i].size);
        total += size <= 16 ? 16 : (size + 15) / 16 * 16;
    }
    if (total < 16) total = 16;
    if (argbytes != total) {
        gpuemu::this_worker()->last_error = std::string(gpuemu_entries[k].name) + ": argument buffer of " +
                                            std::to_string(argbytes) + " bytes, the parameters' slots take " +
                                            std::to_string(total) + " (emulator layout mismatch)";
        return -1;
    }
    // An aligned copy of the values (each CUDA thread then copies from here into its parameters).
    alignas(16) unsigned char values[16 * 64];
    std::vector<unsigned char> big;
    unsigned char* vals = values;
    if (total > sizeof(values)) {
        big.resize(total + 16);
        vals = big.data() + (16 - reinterpret_cast<uintptr_t>(big.data()) % 16) % 16;
    }
    std::memcpy(vals, argbuf, total);
    void* argv[64];
    std::vector<void*> argv_big;
    void** args = argv;
    if (n > 64) {
        argv_big.resize(n);
        args = argv_big.data();
    }
    for (int i = 0; i < n; ++i) args[i] = vals + offsets[i];
    gpuemu::Launch L;
    L.invoke = gpuemu_entries[k].invoke;
    L.fp = gpuemu_entries[k].fp;
    L.args = args;
    L.grid = dim3(gx, gy, gz);
    L.block = dim3(bx, by, bz);
    L.shared_bytes = shared_bytes;
    L.reverse = (flags & 1) != 0;
    L.poison = env_int("GPUCONV_EMU_POISON", 1) != 0;
    L.nblocks = static_cast<unsigned long long>(gx) * gy * gz;
    return gpuemu_run(L, env_int("GPUCONV_EMU_WORKERS", 1));
}

// The message of this OS thread's last failed launch.
GPUEMU_EXPORT const char* gpuemu_last_error() { return gpuemu::this_worker()->last_error.c_str(); }

// Micro-benchmark of the bare context switch: one block of `nthreads` threads, each passing `rounds`
// barriers of an otherwise empty kernel. Each thread switches once per barrier (the first round starts a
// runner per thread instead) and once more to leave the last one: nthreads * (rounds + 1) + 1 switches.
// Returns nanoseconds per switch.
namespace gpuemu {
static int bench_rounds;
static void bench_body(void (*)(), void**) {
    for (int i = 0; i < bench_rounds; ++i) barrier(__FILE__, __LINE__, 0);
}
}  // namespace gpuemu
GPUEMU_EXPORT double gpuemu_bench_switch(int nthreads, int rounds) {
    gpuemu::bench_rounds = rounds;
    gpuemu::Launch L;
    L.invoke = &gpuemu::bench_body;
    L.fp = nullptr;
    L.args = nullptr;
    L.grid = dim3(1);
    L.block = dim3(static_cast<unsigned>(nthreads));
    L.shared_bytes = 0;
    L.reverse = false;
    L.poison = false;
    L.nblocks = 1;
    timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (gpuemu_run(L, 1) != 0) return -1.0;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ns = (t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec);
    return ns / (static_cast<double>(nthreads) * (rounds + 1) + 1.0);
}
