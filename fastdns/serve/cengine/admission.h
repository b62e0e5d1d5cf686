/* admission.h: which replies the packet cache keeps, and for how long: ``classify`` of
 * fastdns/resolve/cache/admission.py (CoreDNS response.Typify, RFC 2308 negative TTLs) in
 * pure C, verdict for verdict; the differential fuzz (tests/fuzz/test_fuzz_cclassify.py)
 * holds the two equal. The relay (relay.c) classifies each answer it hands up, so Python
 * stores it without walking its records again. Every read is bounds-checked against the
 * length given; no allocation (the caller gives room for the TTL pairs).
 */
#ifndef FASTDNS_CENGINE_ADMISSION_H
#define FASTDNS_CENGINE_ADMISSION_H

#include <stddef.h>
#include <stdint.h>

#include "wire.h"

/* A record is at least 11 bytes (a root owner, type, class, TTL, rdlength): a reply of at most
 * 65535 bytes has fewer records than this. */
#define FD_MAX_RECORDS 6000

#define FD_SUCCESS 0 /* admission.py SUCCESS, DENIAL, SERVFAIL */
#define FD_DENIAL 1
#define FD_SERVFAIL_KIND 2

typedef struct {
    int64_t min_ttl, max_ttl, denial_max_ttl, servfail_ttl; /* CacheConfig's */
} fd_cache_cfg;

typedef struct {
    int kind;
    int64_t life;
    size_t opt_start;
    size_t npairs;   /* (offset after the question, TTL shown at age 0) pairs in ttls */
    uint32_t *ttls;  /* the caller's room: 2 * FD_MAX_RECORDS */
    int as_is;
} fd_verdict;

/* The verdict for `reply` (n bytes) to the query `query` parsed as `q`: 1 cacheable (*out
 * filled), 0 not. `hint` is the negative TTL of a reply without an SOA, or -1 for none. */
int fd_classify(const uint8_t *reply, size_t n, const uint8_t *query, const struct fd_query *q,
                const fd_cache_cfg *cfg, int64_t hint, fd_verdict *out);

#endif
