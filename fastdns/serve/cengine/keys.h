/* keys.h: the cache keys the Python cache holds, mirrored for the compiled relay (relay.h).
 *
 * A query whose key (wire.h: lower-cased name, type, class, DO, CD) is in the cache is Python's
 * to answer (fastdns/resolve/cache/store.py); only the others may be relayed in C. The set
 * keeps a seeded 64-bit hash of each key, not the key: two keys of equal hash are one member,
 * so after one of them leaves, a query for the other is relayed (an extra upstream query,
 * then stored again), never answered wrongly; with a per-worker random seed that is about
 * one pair in 2^64. Open addressing, grown as the mirrored cache grows (which is bounded).
 */
#ifndef FASTDNS_CENGINE_KEYS_H
#define FASTDNS_CENGINE_KEYS_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t *slots; /* 0: empty, 1: a removed member (tombstone), else a hash (>= 2) */
    size_t cap;      /* a power of two */
    size_t count, tombs;
    uint64_t seed;
} fd_keys;

int fd_keys_init(fd_keys *k, uint64_t seed); /* -1 with MemoryError set */
void fd_keys_free(fd_keys *k);
int fd_keys_add(fd_keys *k, const uint8_t *key, size_t len); /* -1 with MemoryError set */
void fd_keys_discard(fd_keys *k, const uint8_t *key, size_t len);
int fd_keys_has(const fd_keys *k, const uint8_t *key, size_t len);
void fd_keys_clear(fd_keys *k);

#endif
