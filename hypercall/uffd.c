/* uffd.c: the host-window fault engine (userfaultfd).
 *
 * A window is an anonymous host mapping whose pages rumpvm supplies.  A C
 * thread reads the window's userfaultfd and serves every fault from the
 * window's page table without the GIL: a Python thread that touches the
 * window while holding the GIL (a memoryview index, numpy, ctypes) would
 * deadlock a Python handler, so no Python runs on the fault path.
 *
 * Page states (one byte per page, `st`):
 *   ABSENT   never written, or evicted while it held zeros: a touch gets a
 *            zero page;
 *   PRESENT  mapped in the window; installed write-protected unless the
 *            touch was a write, so the first write to a clean page is a
 *            WP fault that marks it dirty;
 *   PARKED   moved out of the window into the same page of the parking
 *            area (UFFDIO_MOVE, no copy) but still resident: the next
 *            touch is a cheap fault that moves it back and counts as a
 *            reference (the clock's reference bit);
 *   SWAPPED  its only copy is in its swap slot (checksummed).
 * `dirty` is meaningful for PRESENT/PARKED pages; `valid` says the slot
 * holds the page's current contents (a clean page is dropped without a
 * write).
 *
 * Limit: `resident` (PRESENT + PARKED) never exceeds `budget`, the frames
 * Python charged to the memory limit for this window.  When no more than
 * `lowwater` frames of it are spare the engine asks Python for more
 * (rv_win_wait's pressure bit), ahead of need; a fault at the budget
 * before Python answered evicts one page first (the engine's own clock,
 * the fallback).  Python shrinks the budget with rv_win_evict/rv_win_trim
 * and grows it with rv_win_grant.  The budget never drops below
 * `minbudget`, so a fault never waits for Python.
 *
 * Python keeps the policy: every page that becomes resident (or that the
 * engine evicts by itself) is queued once in `evq` for Python's window
 * thread (rv_win_wait, rv_win_drain), which keeps a stub page on the
 * kernel's page queues for each resident window page; the pagedaemon's
 * policy picks victims among them and rv_win_evict writes them out.  A
 * page the pagedaemon deactivates is parked (rv_win_park); touching it
 * again is a refault reported as a reference (`refd`).
 *
 * Lock: `mu` guards the page table and counters; it is held while a fault
 * is served and across eviction I/O.  The engine touches only its own
 * memory (bounce page, parking area): window pages are moved, copied and
 * protected with ioctls.  Each swap slot is the window's own (reserved at
 * creation), so eviction never needs an allocation.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "uffd.h"

/* Newer than the build host's headers may be (Linux 6.6 / 6.8 uapi). */
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef UFFDIO_MOVE
struct uffdio_move {
    __u64 dst;
    __u64 src;
    __u64 len;
    __u64 mode;
    __s64 move;
};
#define UFFDIO_MOVE _IOWR(UFFDIO, 0x05, struct uffdio_move)
#define UFFDIO_MOVE_MODE_DONTWAKE ((__u64)1 << 0)
#endif
#ifndef UFFDIO_POISON
struct uffdio_poison {
    struct uffdio_range range;
    __u64 mode;
    __s64 updated;
};
#define UFFDIO_POISON _IOWR(UFFDIO, 0x08, struct uffdio_poison)
#endif

uint64_t rv_checksum(uintptr_t addr, size_t len);

#define AHEAD_MIN 3   /* pages brought in after the faulting one, first time */
#define AHEAD_MAX 31  /* ... at most, while faults stay sequential */

enum { ABSENT, PRESENT, PARKED, SWAPPED };
enum {  /* rv_win_stats slots (mirrored in hypercall.WINDOW_STATS) */
    S_RESIDENT, S_BUDGET, S_ZEROFILLS, S_SWAPINS, S_REFAULTS, S_WPFAULTS,
    S_EVICTIONS, S_WRITES, S_SELFEVICTIONS, S_ERRORS, S_PENDING, S_MOVEFAILS, S_LASTERR, S_NSTATS
};

typedef struct rv_win {
    int uffd, stopfd, evfd, swapfd;
    size_t npages, pgsz;
    char *base, *park, *bounce, *zeros;  /* bounce and zeros: AHEAD_MAX + 1 pages */
    size_t last, ahead;             /* the last missing fault's page; the fault-around run */
    const int64_t *slots;           /* the window's swap slots, one per page */
    uint8_t *st, *dirty, *valid;
    uint64_t *sums;
    size_t hand;                    /* the clock hand */
    int64_t stats[S_NSTATS];
    int64_t minbudget;
    pthread_mutex_t mu;
    pthread_t thread;
    uint8_t *pend, *refd;           /* page queued in evq; refaulted since drained */
    uint32_t *evq;                  /* pages whose residency changed, for Python */
    size_t evhead, evlen;
    int armed, pressure, asked;     /* Python sleeps in rv_win_wait; budget wanted; asked since the last grant */
    int64_t lowwater;               /* ask for budget when this little is spare */
    int running, closing;
} rv_win;

/* A userfaultfd that also serves kernel-mode faults (read(2) into a
 * window): the syscall (root, CAP_SYS_PTRACE, or the sysctl allows it),
 * else /dev/userfaultfd.  -errno; *why says which route failed last
 * (1: syscall refused, 2: device not accessible, 3: UFFDIO_API). */
int rv_uffd_open(int *why)
{
    int fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    int err = errno;
    *why = 1;
    if (fd < 0) {
        int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (dev < 0) {
            *why = 2;
            return -(err == EPERM ? EPERM : errno);
        }
        fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
        err = errno;
        close(dev);
        if (fd < 0)
            return -err;
    }
    struct uffdio_api api = {.api = UFFD_API,
                             .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_MOVE | UFFD_FEATURE_POISON};
    if (ioctl(fd, UFFDIO_API, &api) < 0) {
        err = errno;
        close(fd);
        *why = 3;
        return -err;
    }
    return fd;
}

static int reg(int uffd, char *addr, size_t len, __u64 mode)
{
    struct uffdio_register r = {.range = {.start = (uintptr_t)addr, .len = len}, .mode = mode};
    return ioctl(uffd, UFFDIO_REGISTER, &r);
}

static int wake(rv_win *w, size_t i)
{
    struct uffdio_range r = {.start = (uintptr_t)(w->base + i * w->pgsz), .len = w->pgsz};
    return ioctl(w->uffd, UFFDIO_WAKE, &r);
}

static int protect(rv_win *w, size_t i, int on)
{
    struct uffdio_writeprotect p = {.range = {.start = (uintptr_t)(w->base + i * w->pgsz), .len = w->pgsz},
                                    .mode = on ? UFFDIO_WRITEPROTECT_MODE_WP : UFFDIO_WRITEPROTECT_MODE_DONTWAKE};
    return ioctl(w->uffd, UFFDIO_WRITEPROTECT, &p);
}

static int move(rv_win *w, char *dst, char *src)
{
    struct uffdio_move m = {.dst = (uintptr_t)dst, .src = (uintptr_t)src, .len = w->pgsz,
                            .mode = UFFDIO_MOVE_MODE_DONTWAKE};
    if (ioctl(w->uffd, UFFDIO_MOVE, &m) < 0 || m.move != (__s64)w->pgsz) {
        w->stats[S_MOVEFAILS]++;
        w->stats[S_LASTERR] = errno;
        return -1;
    }
    return 0;
}

static int all_zero(const char *p, size_t len)
{
    const uint64_t *q = (const uint64_t *)p;
    for (size_t k = 0; k < len / 8; k++)
        if (q[k])
            return 0;
    return 1;
}

/* Write a parked page's contents to its slot if they are not there (a
 * page that never reached swap and holds only zeros needs no copy). */
static int write_out(rv_win *w, size_t i, const char *p);

static int clean(rv_win *w, size_t i)
{
    if (!w->dirty[i] && (w->valid[i] || w->st[i] != PARKED))
        return 0;
    return write_out(w, i, w->park + i * w->pgsz);
}

/* Write page i's contents, at p, to its slot (a page of zeros that never
 * reached swap needs none). */
static int write_out(rv_win *w, size_t i, const char *p)
{
    if (!w->valid[i] && all_zero(p, w->pgsz)) {
        w->dirty[i] = 0;
        return 0;
    }
    if (pwrite(w->swapfd, p, w->pgsz, (off_t)w->slots[i] * (off_t)w->pgsz) != (ssize_t)w->pgsz) {
        w->stats[S_ERRORS]++;
        return -1;
    }
    w->sums[i] = rv_checksum((uintptr_t)p, w->pgsz);
    w->valid[i] = 1;
    w->dirty[i] = 0;
    w->stats[S_WRITES]++;
    return 0;
}

/* Wake Python's window thread if it sleeps in rv_win_wait (one write per
 * sleep, not per event). */
static void signal_python(rv_win *w)
{
    if (w->armed) {
        uint64_t one = 1;
        w->armed = 0;
        if (write(w->evfd, &one, sizeof one) != sizeof one)
            w->stats[S_ERRORS]++;
    }
}

/* Tell Python page i became resident or left (each page at most once in
 * the queue: the queue never overflows).  Python is woken once EV_BATCH
 * pages are queued (a wake-up per fault would cost the faulting thread a
 * CPU); a request for budget, rv_win_wait or rv_win_drain flush sooner. */
#define EV_BATCH 64
static void note(rv_win *w, size_t i)
{
    if (!w->pend[i]) {
        w->pend[i] = 1;
        w->evq[(w->evhead + w->evlen++) % w->npages] = (uint32_t)i;
    }
    if (w->evlen >= EV_BATCH)
        signal_python(w);
}

/* Move a present page to the parking area (still resident). */
static int park(rv_win *w, size_t i)
{
    if (move(w, w->park + i * w->pgsz, w->base + i * w->pgsz) < 0)
        return -1;  /* pinned or busy in the host kernel: pass over it */
    w->st[i] = PARKED;
    return 0;
}

/* Evict a parked page: write it if dirty, then free its host page.  A
 * clean page that never reached swap held zeros since its last write-out
 * ... or ever: it goes back to ABSENT only when no slot copy exists. */
static int evict(rv_win *w, size_t i)
{
    if (clean(w, i) < 0)
        return -1;
    char *p = w->park + i * w->pgsz;
    madvise(p, w->pgsz, MADV_DONTNEED);
    w->st[i] = w->valid[i] ? SWAPPED : ABSENT;
    w->stats[S_RESIDENT]--;
    w->stats[S_EVICTIONS]++;
    return 0;
}

/* One clock step over up to two rounds: present pages are parked (their
 * reference bit cleared), parked ones evicted.  Returns 0 if one page was
 * evicted. */
static int clock_evict(rv_win *w)
{
    for (size_t n = 0; n < 2 * w->npages + 1; n++) {
        size_t i = w->hand;
        w->hand = (w->hand + 1) % w->npages;
        if (w->st[i] == PRESENT) {
            park(w, i);
        } else if (w->st[i] == PARKED && evict(w, i) == 0) {
            note(w, i);
            return 0;
        }
    }
    return -1;
}

/* Serve a missing-page fault at page i (mu held). */
static void serve_missing(rv_win *w, size_t i, int wr)
{
    char *dst = w->base + i * w->pgsz;
    if (w->st[i] == PRESENT) {
        /* Another thread's fault on it was served first (EEXIST: just
         * wake), or the host discarded the page (MADV_DONTNEED): like
         * Linux, the next touch sees zeros, and no older copy is valid. */
        struct uffdio_copy z = {.dst = (uintptr_t)dst, .src = (uintptr_t)w->zeros, .len = w->pgsz,
                                .mode = wr ? 0 : UFFDIO_COPY_MODE_WP};
        if (ioctl(w->uffd, UFFDIO_COPY, &z) == 0) {
            w->dirty[i] = (uint8_t)wr;
            w->valid[i] = 0;
        } else {
            wake(w, i);
        }
        return;
    }
    if (w->st[i] == PARKED) {
        if (move(w, dst, w->park + i * w->pgsz) < 0) {
            w->stats[S_ERRORS]++;
            wake(w, i);  /* retried by the host; the page is still parked */
            return;
        }
        w->st[i] = PRESENT;
        w->stats[S_REFAULTS]++;
        w->refd[i] = 1;
        note(w, i);
        if (wr)
            w->dirty[i] = 1;
        else if (!w->dirty[i])
            protect(w, i, 1);
        wake(w, i);
        return;
    }
    if (w->stats[S_RESIDENT] >= w->stats[S_BUDGET]) {
        if (clock_evict(w) < 0) {
            w->stats[S_ERRORS]++;
            wake(w, i);  /* no page could go (I/O errors): the host retries */
            return;
        }
        w->stats[S_SELFEVICTIONS]++;
        w->pressure = 1;  /* ask Python for more budget */
        signal_python(w);
    }
    /* Fault-around while the faults are sequential: the next absent pages
     * (or swapped pages in the following slots) come in with this one,
     * within the spare budget; the window doubles up to AHEAD_MAX. */
    w->ahead = w->last + 1 == i ? (w->ahead ? 2 * w->ahead + 1 : AHEAD_MIN) : 0;
    if (w->ahead > AHEAD_MAX)
        w->ahead = AHEAD_MAX;
    w->last = i;
    int swapped = w->st[i] == SWAPPED;
    size_t n = 1, room = (size_t)(w->stats[S_BUDGET] - w->stats[S_RESIDENT]);
    while (n <= w->ahead && n < room && i + n < w->npages && w->st[i + n] == w->st[i]
           && (!swapped || w->slots[i + n] == w->slots[i] + (int64_t)n))
        n++;
    const char *src = w->zeros;
    if (swapped) {
        ssize_t got = pread(w->swapfd, w->bounce, n * w->pgsz, (off_t)w->slots[i] * (off_t)w->pgsz);
        size_t good = 0;
        while (got > 0 && good < n && (good + 1) * w->pgsz <= (size_t)got
               && rv_checksum((uintptr_t)(w->bounce + good * w->pgsz), w->pgsz) == w->sums[i + good])
            good++;
        if (good == 0) {  /* never wrong data: the toucher gets SIGBUS */
            struct uffdio_poison p = {.range = {.start = (uintptr_t)dst, .len = w->pgsz}};
            ioctl(w->uffd, UFFDIO_POISON, &p);
            w->stats[S_ERRORS]++;
            return;
        }
        n = good;  /* a bad page further on stays on swap, to fail when touched */
        src = w->bounce;
        w->stats[S_SWAPINS] += (int64_t)n;
    } else {
        w->stats[S_ZEROFILLS] += (int64_t)n;
    }
    /* The faulting page as the access needs it.  The rest: pages from swap
     * clean (write-protected); zero pages as the faulting one, since a
     * loop writing fresh memory would otherwise take a write-protect
     * fault on each — marked dirty, but a page still all zeros at
     * eviction is dropped without a write. */
    struct uffdio_copy c = {.dst = (uintptr_t)dst, .src = (uintptr_t)src, .len = w->pgsz,
                            .mode = wr ? 0 : UFFDIO_COPY_MODE_WP};
    if (ioctl(w->uffd, UFFDIO_COPY, &c) < 0 && errno != EEXIST) {
        w->stats[S_ERRORS]++;
        wake(w, i);
        return;
    }
    int rest_wr = wr && !swapped;
    size_t got = 1;
    if (n > 1) {
        struct uffdio_copy r = {.dst = (uintptr_t)(dst + w->pgsz), .src = (uintptr_t)(src + w->pgsz),
                                .len = (n - 1) * w->pgsz,
                                .mode = UFFDIO_COPY_MODE_DONTWAKE | (rest_wr ? 0 : UFFDIO_COPY_MODE_WP)};
        ioctl(w->uffd, UFFDIO_COPY, &r);
        got += r.copy > 0 ? (size_t)r.copy / w->pgsz : 0;  /* a page mapped meanwhile stops the run */
    }
    for (size_t k = 0; k < got; k++) {
        w->st[i + k] = PRESENT;
        w->dirty[i + k] = (uint8_t)(k == 0 ? wr : rest_wr);
        w->stats[S_RESIDENT]++;
        note(w, i + k);
    }
    if (!w->asked && w->stats[S_BUDGET] - w->stats[S_RESIDENT] <= w->lowwater) {
        w->asked = w->pressure = 1;  /* ahead of need: Python frees by the kernel's policy */
        signal_python(w);
    }
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Faults come in runs (a loop over fresh pages): after serving one the
 * engine keeps reading for SPIN_NS before it sleeps in poll.  Waking a
 * sleeping thread costs tens of microseconds on a VM whose idle vCPU
 * halts — more than the fault itself. */
#define SPIN_NS 50000

static void *engine(void *arg)
{
    rv_win *w = arg;
    struct pollfd pf[2] = {{.fd = w->uffd, .events = POLLIN}, {.fd = w->stopfd, .events = POLLIN}};
    for (;;) {
        if (poll(pf, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (pf[1].revents)
            break;
        struct uffd_msg msg;
        int64_t until = now_ns() + SPIN_NS;
        for (;;) {
            if (read(w->uffd, &msg, sizeof msg) != sizeof msg) {
                if (now_ns() < until)
                    continue;
                break;
            }
            until = now_ns() + SPIN_NS;
            if (msg.event != UFFD_EVENT_PAGEFAULT)
                continue;
            uintptr_t a = msg.arg.pagefault.address & ~(uintptr_t)(w->pgsz - 1);
            size_t i = (a - (uintptr_t)w->base) / w->pgsz;
            if (a < (uintptr_t)w->base || i >= w->npages)
                continue;
            pthread_mutex_lock(&w->mu);
            if (msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) {
                if (w->st[i] == PRESENT)
                    w->dirty[i] = 1;
                w->stats[S_WPFAULTS]++;
                protect(w, i, 0);
                wake(w, i);
            } else {
                serve_missing(w, i, !!(msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE));
            }
            pthread_mutex_unlock(&w->mu);
        }
    }
    return NULL;
}

static void *region(size_t len)
{
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    madvise(p, len, MADV_DONTFORK);   /* a forked host child gets SIGSEGV, not silent zeros */
    madvise(p, len, MADV_NOHUGEPAGE); /* UFFDIO_MOVE moves base pages only */
    return p;
}

static void teardown(rv_win *w);

/* Serve the caller's anonymous mapping `base` of npages pages through
 * userfaultfd `uffd` (taken over), paging to `swapfd` at `slots` (one per page, kept by the caller
 * until destroy).  NULL with *err set on failure. */
rv_win *rv_win_create(int uffd, char *base, size_t npages, size_t pgsz, int swapfd, const int64_t *slots,
                      int64_t budget, int *err)
{
    rv_win *w = calloc(1, sizeof *w);
    if (w == NULL) {
        close(uffd);
        *err = ENOMEM;
        return NULL;
    }
    w->uffd = uffd;
    w->npages = npages;
    w->pgsz = pgsz;
    w->swapfd = swapfd;
    w->slots = slots;
    w->stats[S_BUDGET] = w->minbudget = budget;
    w->lowwater = budget / 2;
    pthread_mutex_init(&w->mu, NULL);
    size_t len = npages * pgsz;
    w->base = base;  /* the caller's mapping (MADV_DONTFORK, no huge pages) */
    w->park = region(len);
    w->bounce = aligned_alloc(pgsz, (AHEAD_MAX + 1) * pgsz);
    w->zeros = calloc(AHEAD_MAX + 1, pgsz);
    w->last = (size_t)-2;
    w->st = calloc(npages, 1);
    w->dirty = calloc(npages, 1);
    w->valid = calloc(npages, 1);
    w->sums = calloc(npages, sizeof *w->sums);
    w->pend = calloc(npages, 1);
    w->refd = calloc(npages, 1);
    w->evq = calloc(npages, sizeof *w->evq);
    w->stopfd = eventfd(0, EFD_CLOEXEC);
    w->evfd = eventfd(0, EFD_CLOEXEC);
    if (!w->park || !w->bounce || !w->zeros || !w->st || !w->dirty || !w->valid || !w->sums || !w->pend || !w->refd || !w->evq
        || w->stopfd < 0 || w->evfd < 0) {
        *err = ENOMEM;
        goto fail;
    }
    if (reg(uffd, w->base, len, UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP) < 0
        || reg(uffd, w->park, len, UFFDIO_REGISTER_MODE_WP) < 0) {
        *err = errno;
        goto fail;
    }
    if ((*err = pthread_create(&w->thread, NULL, engine, w)) != 0)
        goto fail;
    w->running = 1;
    return w;
fail:
    teardown(w);
    return NULL;
}

/* Stop serving: stop the engine thread, then put a plain anonymous
 * mapping over the window (which unregisters it: a later touch sees
 * zeros, never a hang), and wake rv_win_wait.  The addresses stay mapped
 * until the caller unmaps them (views of the window may still exist). */
static void stop_engine(rv_win *w)
{
    if (w->running) {
        uint64_t one = 1;
        if (write(w->stopfd, &one, sizeof one) == sizeof one)
            pthread_join(w->thread, NULL);
        w->running = 0;
    }
}

void rv_win_detach(rv_win *w);

static void release(rv_win *w)
{
    mmap(w->base, w->npages * w->pgsz, PROT_READ | PROT_WRITE,
         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
    madvise(w->base, w->npages * w->pgsz, MADV_DONTFORK);
    /* Faults queued before the engine stopped wait until woken: closing
     * the userfaultfd wakes them, and they retry on plain memory. */
    close(w->uffd);
    w->uffd = -1;
    pthread_mutex_lock(&w->mu);
    w->stats[S_RESIDENT] = 0;
    pthread_mutex_unlock(&w->mu);
    rv_win_detach(w);
}

void rv_win_close(rv_win *w)
{
    stop_engine(w);
    release(w);
}

/* Tell Python's budget thread to go (rv_win_wait returns 0 from now on)
 * while the engine goes on serving faults until the close. */
void rv_win_detach(rv_win *w)
{
    pthread_mutex_lock(&w->mu);
    w->closing = 1;
    pthread_mutex_unlock(&w->mu);
    uint64_t one = 1;
    if (write(w->evfd, &one, sizeof one) != sizeof one)
        w->stats[S_ERRORS]++;
}

/* Close, saving first what only memory holds: each present or parked
 * page is copied into the next frame of dst (idx[k] = the page copied to
 * dst[k]) and becomes ABSENT with no slot copy, so a pageout racing the
 * close passes over it and the caller takes no slot for it; past ndst
 * frames, a page goes to its slot (SWAPPED), or is lost without swap or
 * on a write error (counted in errors).  Swapped pages keep their slots
 * (rv_win_states, rv_win_sums).  The engine is stopped and the window
 * unregistered first, so a page the host discarded (MADV_DONTNEED) reads
 * as the zeros it now holds instead of a fault nobody serves; all of it
 * in one call, so a thread holding the GIL that touches the window
 * meanwhile only waits for the release.  Returns the pages copied. */
int64_t rv_win_close_save(rv_win *w, const uintptr_t *dst, uint32_t *idx, int64_t ndst)
{
    int64_t n = 0;
    stop_engine(w);
    struct uffdio_range all = {.start = (uintptr_t)w->base, .len = w->npages * w->pgsz};
    if (ioctl(w->uffd, UFFDIO_UNREGISTER, &all) < 0)
        w->stats[S_ERRORS]++;
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->npages; i++) {
        if (w->st[i] != PRESENT && w->st[i] != PARKED)
            continue;
        char *p = (w->st[i] == PRESENT ? w->base : w->park) + i * w->pgsz;
        if (n < ndst) {
            memcpy((char *)dst[n], p, w->pgsz);
            idx[n++] = (uint32_t)i;
            w->valid[i] = 0;
        } else if (w->dirty[i] && (w->swapfd < 0 || write_out(w, i, p) < 0)) {
            w->stats[S_ERRORS]++;
            w->valid[i] = 0;
        }
        w->st[i] = w->valid[i] ? SWAPPED : ABSENT;
    }
    pthread_mutex_unlock(&w->mu);
    release(w);
    return n;
}

/* Each page's swap checksum (meaningful where rv_win_states says the slot
 * is valid): the kernel takes over the slots of a closing window. */
void rv_win_sums(rv_win *w, uint64_t *out)
{
    pthread_mutex_lock(&w->mu);
    memcpy(out, w->sums, w->npages * sizeof *out);
    pthread_mutex_unlock(&w->mu);
}

static void teardown(rv_win *w)
{
    if (w->park)
        munmap(w->park, w->npages * w->pgsz);
    if (w->uffd >= 0)
        close(w->uffd);
    if (w->stopfd > 0)
        close(w->stopfd);
    if (w->evfd > 0)
        close(w->evfd);
    free(w->bounce);
    free(w->zeros);
    free(w->st);
    free(w->dirty);
    free(w->valid);
    free(w->sums);
    free(w->pend);
    free(w->refd);
    free(w->evq);
    pthread_mutex_destroy(&w->mu);
    free(w);
}

/* Free a closed window's engine (after rv_win_wait returned 0 to every
 * waiter); the window's addresses are the caller's to unmap. */
void rv_win_destroy(rv_win *w) { teardown(w); }

/* Block until there is news for Python: 0 the window closed, else bit 0
 * events to drain (rv_win_drain), bit 1 the engine evicted for lack of
 * budget since the last call.  Called with the GIL released. */
int rv_win_wait(rv_win *w)
{
    for (;;) {
        pthread_mutex_lock(&w->mu);
        if (w->closing) {
            pthread_mutex_unlock(&w->mu);
            return 0;
        }
        if (w->evlen >= EV_BATCH || w->pressure) {
            int r = (w->evlen ? 1 : 0) | (w->pressure ? 2 : 0);
            w->pressure = 0;
            pthread_mutex_unlock(&w->mu);
            return r | 4;  /* never 0 */
        }
        w->armed = 1;
        pthread_mutex_unlock(&w->mu);
        uint64_t n;
        if (read(w->evfd, &n, sizeof n) != sizeof n)
            return 0;
    }
}

/* Up to max pages whose residency changed since they were last drained:
 * their index, state now, and whether they were refaulted (a reference).
 * Returns how many. */
int64_t rv_win_drain(rv_win *w, uint32_t *idx, uint8_t *state, uint8_t *ref, int64_t max)
{
    int64_t n = 0;
    pthread_mutex_lock(&w->mu);
    while (n < max && w->evlen) {
        size_t i = w->evq[w->evhead];
        w->evhead = (w->evhead + 1) % w->npages;
        w->evlen--;
        w->pend[i] = 0;
        idx[n] = (uint32_t)i;
        state[n] = w->st[i];
        ref[n] = w->refd[i];
        w->refd[i] = 0;
        n++;
    }
    pthread_mutex_unlock(&w->mu);
    return n;
}

/* Evict the listed pages that are still resident (the pagedaemon's
 * victims), writing dirty ones; done[k] says whether idx[k] went, and
 * *evicted counts them.  The budget shrinks by as many (not below the
 * minimum): returns the frames given back. */
int64_t rv_win_evict(rv_win *w, const uint32_t *idx, uint8_t *done, int64_t n, int64_t *evicted)
{
    int64_t ev = 0;
    pthread_mutex_lock(&w->mu);
    for (int64_t k = 0; k < n; k++) {
        size_t i = idx[k];
        done[k] = 0;
        if (i >= w->npages || (w->st[i] == PRESENT && park(w, i) < 0))
            continue;
        if (w->st[i] == PARKED && evict(w, i) == 0) {
            done[k] = 1;
            ev++;
        }
    }
    int64_t give = w->stats[S_BUDGET] - ev < w->minbudget ? w->stats[S_BUDGET] - w->minbudget : ev;
    w->stats[S_BUDGET] -= give;
    pthread_mutex_unlock(&w->mu);
    *evicted = ev;
    return give;
}

/* Park the listed present pages (the pagedaemon deactivated them): the
 * next touch of one is a refault Python hears as a reference. */
void rv_win_park(rv_win *w, const uint32_t *idx, int64_t n)
{
    pthread_mutex_lock(&w->mu);
    for (int64_t k = 0; k < n; k++)
        if (idx[k] < w->npages && w->st[idx[k]] == PRESENT)
            park(w, idx[k]);
    pthread_mutex_unlock(&w->mu);
}

/* Give back the budget no resident page uses beyond `spare` pages (not
 * below the minimum); returns the frames given back. */
int64_t rv_win_trim(rv_win *w, int64_t spare)
{
    pthread_mutex_lock(&w->mu);
    int64_t keep = w->stats[S_RESIDENT] + spare > w->minbudget ? w->stats[S_RESIDENT] + spare : w->minbudget;
    int64_t give = w->stats[S_BUDGET] > keep ? w->stats[S_BUDGET] - keep : 0;
    w->stats[S_BUDGET] -= give;
    pthread_mutex_unlock(&w->mu);
    return give;
}

/* Grow the budget by n frames (already charged by the caller). */
void rv_win_grant(rv_win *w, int64_t n)
{
    pthread_mutex_lock(&w->mu);
    w->stats[S_BUDGET] += n;
    w->asked = 0;
    pthread_mutex_unlock(&w->mu);
}

void rv_win_stats(rv_win *w, int64_t *out)
{
    pthread_mutex_lock(&w->mu);
    w->stats[S_PENDING] = (int64_t)w->evlen;
    memcpy(out, w->stats, sizeof w->stats);
    pthread_mutex_unlock(&w->mu);
}

/* Per-page states (ABSENT/PRESENT/PARKED/SWAPPED) and swap validity into
 * `out` (2 bytes a page): for /vm and check(). */
void rv_win_states(rv_win *w, uint8_t *out)
{
    pthread_mutex_lock(&w->mu);
    for (size_t i = 0; i < w->npages; i++) {
        out[2 * i] = w->st[i];
        out[2 * i + 1] = w->valid[i];
    }
    pthread_mutex_unlock(&w->mu);
}

/* Copy [off, off+len) of the window into dst without faulting anything
 * in (a peek: resident pages are read where they are, swapped ones from
 * their slot and checked, absent ones are zeros).  0, or -EIO for a bad
 * slot.  A present page is read with mu dropped: if the host discarded it
 * (MADV_DONTNEED), the read faults, and the engine, which needs mu, serves
 * it (zeros, as the host would see). */
int rv_win_peek(rv_win *w, size_t off, char *dst, size_t len)
{
    int rc = 0;
    pthread_mutex_lock(&w->mu);
    while (len > 0) {
        size_t i = off / w->pgsz, in = off % w->pgsz, n = w->pgsz - in < len ? w->pgsz - in : len;
        if (w->st[i] == PRESENT) {
            pthread_mutex_unlock(&w->mu);
            memcpy(dst, w->base + off, n);
            pthread_mutex_lock(&w->mu);
        } else if (w->st[i] == PARKED) {
            memcpy(dst, w->park + off, n);
        } else if (w->st[i] == SWAPPED) {
            if (pread(w->swapfd, w->bounce, w->pgsz, (off_t)w->slots[i] * (off_t)w->pgsz) != (ssize_t)w->pgsz
                || rv_checksum((uintptr_t)w->bounce, w->pgsz) != w->sums[i]) {
                rc = -EIO;
                break;
            }
            memcpy(dst, w->bounce + in, n);
        } else {
            memset(dst, 0, n);
        }
        dst += n;
        off += n;
        len -= n;
    }
    pthread_mutex_unlock(&w->mu);
    return rc;
}
