"""cffi build script for hypercall._hyper (out-of-line API mode).

Compiled at `pip install` time through setuptools' `cffi_modules`; the C
here is the whole of rumpvm's contact with the host: anonymous mmap arenas,
malloc, swap-file block I/O with iovecs, environment parameters, and the
page helpers (zero, copy, copy out of / into page runs, checksum) the profile asked for.
uffd.c is the host-window fault engine (userfaultfd, its own thread).
"""

import os

from cffi import FFI

ffibuilder = FFI()

ffibuilder.cdef(
    """
    void *rv_anonmmap(size_t size, int alignbit, int exec);
    int rv_unmap(void *addr, size_t size);
    void *rv_malloc(size_t size, size_t align);
    void rv_free(void *p);
    const char *rv_getenv(const char *name);
    long rv_pagesize(void);
    int64_t rv_host_memory(void);

    void rv_page_zero(uintptr_t addr, size_t len);
    void rv_page_copy(uintptr_t dst, uintptr_t src, size_t len);
    void rv_copy_out(char *dst, const uintptr_t *pages, size_t off, size_t len, size_t pgsz);
    void rv_copy_in(const char *src, const uintptr_t *pages, size_t off, size_t len, size_t pgsz);
    uint64_t rv_checksum(uintptr_t addr, size_t len);

    int rv_swap_open(const char *path);
    int rv_swap_mktemp(char *template_);
    int rv_swap_truncate(int fd, int64_t size);
    int rv_close(int fd);
    int64_t rv_pwrite_pages(int fd, const uintptr_t *pages, int n, size_t pgsz, int64_t off, uint64_t *sums);
    int64_t rv_pread_pages(int fd, const uintptr_t *pages, int n, size_t pgsz, int64_t off, uint64_t *sums);
    int64_t rv_pread(int fd, char *buf, size_t len, int64_t off);

    """
)

# The window engine's interface, from its header (cdef takes no directives).
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "uffd.h")) as _h:
    ffibuilder.cdef("".join(line for line in _h if not line.startswith("#")))

ffibuilder.set_source(
    "hypercall._hyper",
    r"""
    #ifndef _GNU_SOURCE
    #define _GNU_SOURCE
    #endif
    #include <errno.h>
    #include <fcntl.h>
    #include <limits.h>
    #include <stdint.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <sys/stat.h>
    #include <sys/uio.h>
    #include <unistd.h>
    #include "uffd.h"

    /* mmap with the start aligned to 1<<alignbit: over-map, then trim. */
    void *rv_anonmmap(size_t size, int alignbit, int exec)
    {
        int prot = PROT_READ | PROT_WRITE | (exec ? PROT_EXEC : 0);
        size_t align = alignbit > 0 ? (size_t)1 << alignbit : 0;
        size_t total = size + align;
        char *p = mmap(NULL, total, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
        if (align == 0)
            return p;
        uintptr_t start = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
        size_t head = start - (uintptr_t)p, tail = total - head - size;
        if (head)
            munmap(p, head);
        if (tail)
            munmap((char *)start + size, tail);
        return (void *)start;
    }

    int rv_unmap(void *addr, size_t size) { return munmap(addr, size); }

    void *rv_malloc(size_t size, size_t align)
    {
        void *p = NULL;
        if (align < sizeof(void *))
            align = sizeof(void *);
        errno = posix_memalign(&p, align, size);
        return errno ? NULL : p;
    }

    void rv_free(void *p) { free(p); }
    const char *rv_getenv(const char *name) { return getenv(name); }
    long rv_pagesize(void) { return sysconf(_SC_PAGESIZE); }
    /* Physical memory of the host, as a container without a limit sees it. */
    int64_t rv_host_memory(void)
    {
        long pages = sysconf(_SC_PHYS_PAGES), size = sysconf(_SC_PAGESIZE);
        if (pages < 0 || size < 0)
            return -1;
        return (int64_t)pages * size;
    }

    /* memmove for copies of pages: a plain loop of 64-byte moves.  glibc
       copies sizes from 2 KiB up to its non-temporal threshold with `rep
       movsb`, which on this AMD host (and under its hypervisor) runs at
       2-2.5x the time of this loop when the source is not in cache; the
       loop keeps up with the one-call memmove of the baselines (the
       readinto and /vm mem profiles). */
    static void rv_memcpy(char *dst, const char *src, size_t n)
    {
        if (dst < src + n && src < dst + n) {  /* a caller's buffer may alias the pages (a host window) */
            memmove(dst, src, n);
            return;
        }
        size_t i = 0;
        for (; i + 64 <= n; i += 64)
            __builtin_memcpy(dst + i, src + i, 64);
        memcpy(dst + i, src + i, n - i);
    }

    void rv_page_zero(uintptr_t addr, size_t len) { memset((void *)addr, 0, len); }
    void rv_page_copy(uintptr_t dst, uintptr_t src, size_t len)
    {
        rv_memcpy((char *)dst, (const char *)src, len);
    }

    /* The bytes of a copy that page i starts, `off` bytes into it: page i
       and the pages after it that follow it in the host (or, for a source
       of zeros, are zeros too), up to `len` bytes; *next is the page after
       them.  Adjacent frames are common (frames are handed out in order)
       and one call per run saves the per-page setup. */
    static size_t rv_span(const uintptr_t *pages, size_t i, size_t off, size_t len, size_t pgsz, size_t *next)
    {
        uintptr_t base = pages[i];
        size_t n = pgsz - off < len ? pgsz - off : len;
        for (i++; n < len && pages[i] == (base ? base + (n + off) : 0); i++)
            n += pgsz < len - n ? pgsz : len - n;
        *next = i;
        return n;
    }

    /* Copy `len` bytes from a run of pages, starting `off` bytes into the
       first, to dst (a page address 0 reads as zeros): one call per run
       instead of a Python slice per page (the multi-page read profile). */
    void rv_copy_out(char *dst, const uintptr_t *pages, size_t off, size_t len, size_t pgsz)
    {
        for (size_t i = 0, next; len > 0; i = next, off = 0) {
            size_t n = rv_span(pages, i, off, len, pgsz, &next);
            if (pages[i])
                rv_memcpy(dst, (const char *)pages[i] + off, n);
            else
                memset(dst, 0, n);
            dst += n;
            len -= n;
        }
    }

    /* The reverse: `len` bytes of src into a run of pages from `off`. */
    void rv_copy_in(const char *src, const uintptr_t *pages, size_t off, size_t len, size_t pgsz)
    {
        for (size_t i = 0, next; len > 0; i = next, off = 0) {
            size_t n = rv_span(pages, i, off, len, pgsz, &next);
            rv_memcpy((char *)pages[i] + off, src, n);
            src += n;
            len -= n;
        }
    }

    /* The swap checksum: XXH64's round on four independent lanes (a page's
       words i, i+1, i+2, i+3 feed lanes 0..3), folded and avalanched at the
       end; len is a multiple of 8.  One lane (the former single chain of
       dependent multiplies) cost ~0.9-1.3 us a page, computed once at
       pageout and once at page-in; four lanes keep the multiplier busy:
       ~0.4 us.  Not XXH64's exact output (no seed, tail folded per word). */
    #define RV_P1 0x9E3779B185EBCA87ULL
    #define RV_P2 0xC2B2AE3D27D4EB4FULL
    #define RV_P3 0x165667B19E3779F9ULL
    static inline uint64_t rv_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
    static inline uint64_t rv_round(uint64_t acc, uint64_t in) { return rv_rotl(acc + in * RV_P2, 31) * RV_P1; }
    uint64_t rv_checksum(uintptr_t addr, size_t len)
    {
        const uint64_t *w = (const uint64_t *)addr;
        size_t n = len / 8, i = 0;
        uint64_t a = RV_P1 + RV_P2, b = RV_P2, c = 0, d = -RV_P1;
        for (; i + 4 <= n; i += 4) {
            a = rv_round(a, w[i]);
            b = rv_round(b, w[i + 1]);
            c = rv_round(c, w[i + 2]);
            d = rv_round(d, w[i + 3]);
        }
        uint64_t h = rv_rotl(a, 1) + rv_rotl(b, 7) + rv_rotl(c, 12) + rv_rotl(d, 18) + len;
        for (; i < n; i++)
            h = rv_rotl(h ^ rv_round(0, w[i]), 27) * RV_P1 + 0x85EBCA77C2B2AE63ULL;
        h ^= h >> 33;
        h *= RV_P2;
        h ^= h >> 29;
        h *= RV_P3;
        return h ^ (h >> 32);
    }

    /* A named swap file: never through a symlink, only a regular file,
       and private to its owner whatever mode it had. */
    int rv_swap_open(const char *path)
    {
        struct stat st;
        int e, fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
            return -1;
        if (fstat(fd, &st) != 0)
            e = errno;
        else if (!S_ISREG(st.st_mode))
            e = EINVAL;
        else if (fchmod(fd, 0600) != 0)
            e = errno;
        else
            return fd;
        close(fd);
        errno = e;
        return -1;
    }
    /* A temporary swap file: unlinked before anything else can happen, so
       only the descriptor keeps it and no name is ever left behind. */
    int rv_swap_mktemp(char *template_)
    {
        int fd = mkostemp(template_, O_CLOEXEC);
        if (fd >= 0)
            unlink(template_);
        return fd;
    }
    int rv_swap_truncate(int fd, int64_t size) { return ftruncate(fd, size); }
    int rv_close(int fd) { return close(fd); }

    static int64_t rv_pio_pages(int fd, const uintptr_t *pages, int n, size_t pgsz,
                                int64_t off, int write)
    {
        struct iovec iov[IOV_MAX < 1024 ? IOV_MAX : 1024];
        int64_t done = 0;
        for (int i = 0; i < n;) {
            int k = 0;
            for (; k < (int)(sizeof(iov) / sizeof(iov[0])) && i + k < n; k++) {
                iov[k].iov_base = (void *)pages[i + k];
                iov[k].iov_len = pgsz;
            }
            size_t want = (size_t)k * pgsz;
            ssize_t r = write ? pwritev(fd, iov, k, off + done) : preadv(fd, iov, k, off + done);
            if (r < 0) {
                if (errno == EINTR)
                    continue;
                return -1;
            }
            if ((size_t)r != want) {
                errno = EIO;  /* short transfer: the swap file is truncated */
                return -1;
            }
            done += r;
            i += k;
        }
        return done;
    }

    /* Page-run I/O; with `sums`, the checksum of each page too (before a
       write, after a read) in the same call: one crossing per run instead
       of one per page (the swap profile). */
    static void rv_sums(const uintptr_t *pages, int n, size_t pgsz, uint64_t *sums)
    {
        for (int i = 0; sums && i < n; i++)
            sums[i] = rv_checksum(pages[i], pgsz);
    }
    int64_t rv_pwrite_pages(int fd, const uintptr_t *pages, int n, size_t pgsz, int64_t off, uint64_t *sums)
    {
        rv_sums(pages, n, pgsz, sums);
        return rv_pio_pages(fd, pages, n, pgsz, off, 1);
    }
    int64_t rv_pread_pages(int fd, const uintptr_t *pages, int n, size_t pgsz, int64_t off, uint64_t *sums)
    {
        int64_t r = rv_pio_pages(fd, pages, n, pgsz, off, 0);
        if (r >= 0)
            rv_sums(pages, n, pgsz, sums);
        return r;
    }
    int64_t rv_pread(int fd, char *buf, size_t len, int64_t off)
    {
        return pread(fd, buf, len, off);
    }
    """,
    sources=["hypercall/uffd.c"],
    include_dirs=["hypercall"],  # the host-window fault engine (a C thread: no GIL on the fault path)
    extra_compile_args=["-O2", "-pthread"],
    extra_link_args=["-pthread"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
