/* uffd.h: the host-window fault engine's interface (see uffd.c). */
#ifndef RV_UFFD_H
#define RV_UFFD_H
#include <stddef.h>
#include <stdint.h>

typedef struct rv_win rv_win;
int rv_uffd_open(int *why);
rv_win *rv_win_create(int uffd, char *base, size_t npages, size_t pgsz, int swapfd, const int64_t *slots,
                      int64_t budget, int *err);
void rv_win_close(rv_win *w);
void rv_win_detach(rv_win *w);
int64_t rv_win_close_save(rv_win *w, const uintptr_t *dst, uint32_t *idx, int64_t ndst);
void rv_win_sums(rv_win *w, uint64_t *out);
void rv_win_destroy(rv_win *w);
void rv_win_grant(rv_win *w, int64_t n);
int64_t rv_win_evict(rv_win *w, const uint32_t *idx, uint8_t *done, int64_t n, int64_t *evicted);
void rv_win_park(rv_win *w, const uint32_t *idx, int64_t n);
int64_t rv_win_trim(rv_win *w, int64_t spare);
int64_t rv_win_drain(rv_win *w, uint32_t *idx, uint8_t *state, uint8_t *ref, int64_t max);
int rv_win_wait(rv_win *w);
void rv_win_stats(rv_win *w, int64_t *out);
void rv_win_states(rv_win *w, uint8_t *out);
int rv_win_peek(rv_win *w, size_t off, char *dst, size_t len);
#endif
