/* render.h: the reply a client gets for an answer the relay matched, built in C: what
 * PacketCache.admit renders for a reply it stores (fastdns/resolve/cache/store.py
 * _first_reply and _render at age 0: the cache's own header, the client's question bytes, the
 * body with the TTLs the verdict shows, our OPT record when the client sent one) or, for a
 * reply it does not store, compose.splice (the client's ID, question bytes and RD, RA set).
 * tests/fuzz/test_fuzz_crender.py holds the bytes equal to Python's. Pure C, bounds-checked.
 */
#ifndef FASTDNS_CENGINE_RENDER_H
#define FASTDNS_CENGINE_RENDER_H

#include <stddef.h>
#include <stdint.h>

#include "admission.h"
#include "wire.h"

typedef struct {
    int64_t capacity, denial_capacity; /* CacheConfig's: 0 stores nothing of that kind */
    uint16_t opt_size;                 /* the payload size our OPT record says */
} fd_render_cfg;

/* The reply for `reply` (n bytes) to the query `query` parsed as `q`, with the cache's
 * verdict `v` (NULL: not cacheable), into out (room for cap bytes): its length, or 0 when it
 * does not fit (the caller leaves the answer to Python). */
size_t fd_render(const uint8_t *reply, size_t n, const uint8_t *query, const struct fd_query *q,
                 const fd_verdict *v, const fd_render_cfg *cfg, uint8_t *out, size_t cap);

#endif
