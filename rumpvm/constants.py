"""Constants of the public API: protections, map flags, inheritance, advice.

Values follow FreeBSD's <sys/mman.h> so that numbers seen in /vm and in
tracebacks mean what an OS engineer expects.
"""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = PAGE_SIZE - 1

PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
PROT_ALL = PROT_READ | PROT_WRITE | PROT_EXEC


def PROT_MAX(prot: int) -> int:
    """Encode a maximum protection into a prot argument (FreeBSD 13's
    PROT_MAX): mmap sets the entry's max_prot from it, mprotect lowers it."""
    return prot << 16


def PROT_MAX_EXTRACT(prot: int) -> int:
    return (prot >> 16) & PROT_ALL

MAP_SHARED = 0x0001
MAP_PRIVATE = 0x0002
MAP_FIXED = 0x0010
MAP_ANON = 0x1000
MAP_FLAGS_VALID = MAP_SHARED | MAP_PRIVATE | MAP_FIXED | MAP_ANON

INHERIT_SHARE = 0
INHERIT_COPY = 1
INHERIT_NONE = 2
INHERIT_VALID = (INHERIT_SHARE, INHERIT_COPY, INHERIT_NONE)

MADV_NORMAL = 0
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_FREE = 5
MADV_NOSYNC = 6
MADV_AUTOSYNC = 7
MADV_NOCORE = 8
MADV_CORE = 9
MADV_VALID = range(MADV_NORMAL, MADV_CORE + 1)

# msync flags (FreeBSD values: MS_SYNC is the absence of MS_ASYNC).
MS_SYNC = 0x0000
MS_ASYNC = 0x0001
MS_INVALIDATE = 0x0002

# A process's u-area (kernel stack and PCB), and how many freed ones are kept.
USPACE = 2 * PAGE_SIZE
UAREA_CACHE = 16

# User address space: [VM_MIN_ADDRESS, VM_MAXUSER_ADDRESS).
VM_MIN_ADDRESS = PAGE_SIZE
VM_MAXUSER_ADDRESS = 0x7FFFFFFFF000

# Kernel address space of the kernel_map (a private range; never user-visible).
VM_MIN_KERNEL_ADDRESS = 0xFFFF800000000000
VM_MAX_KERNEL_ADDRESS = 0xFFFF900000000000

# Access types passed to the fault handler.
VM_PROT_READ = PROT_READ
VM_PROT_WRITE = PROT_WRITE
