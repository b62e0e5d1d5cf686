/* Which replies the packet cache keeps (admission.h): admission.py's classify, line for line. */
#include "admission.h"

#include <string.h>

#define TC 0x0200
#define OPCODE_MASK 0x7800
#define RCODE_MASK 0x000F
#define NOERROR 0
#define SERVFAIL 2
#define NXDOMAIN 3
#define T_SOA 6
#define T_OPT 41
#define T_ANY 255
#define NO_TTL ((int64_t)1 << 32) /* above any TTL */

static uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* wire.py name_end: where the name at i ends (a pointer ends it), or -1. */
static long name_end(const uint8_t *buf, size_t i, size_t n) {
    while (i < n) {
        uint8_t len = buf[i];
        if (len == 0) return (long)i + 1;
        if (len >= 0xC0) return (long)i + 2;
        if (len > 63) return -1;
        i += (size_t)len + 1;
    }
    return -1;
}

/* admission.py _clamp: max(lo, min(v, hi)), lo winning when lo > hi */
static int64_t clamp(int64_t v, int64_t lo, int64_t hi) {
    int64_t m = v < hi ? v : hi;
    return m > lo ? m : lo;
}

/* admission.py _shown: each TTL shown at age 0, capped at `cap` and never below `life`;
 * cap 0: every one shows `life`. */
static void shown(fd_verdict *out, int64_t life, int64_t cap) {
    for (size_t k = 0; k < out->npairs; k++) {
        int64_t t = out->ttls[2 * k + 1];
        if (cap) {
            t = t < cap ? t : cap;
            t = t > life ? t : life;
        } else {
            t = life;
        }
        out->ttls[2 * k + 1] = (uint32_t)t;
    }
}

int fd_classify(const uint8_t *reply, size_t n, const uint8_t *query, const struct fd_query *q,
                const fd_cache_cfg *cfg, int64_t hint, fd_verdict *out) {
    if (n < 12) return 0;
    uint16_t flags = be16(reply + 2);
    size_t an = be16(reply + 6), ns = be16(reply + 8), ar = be16(reply + 10);
    if (flags & (TC | OPCODE_MASK) || !fd_question_matches(reply, n, query, q)) return 0;
    int rcode = flags & RCODE_MASK;
    if (rcode != NOERROR && rcode != NXDOMAIN && rcode != SERVFAIL) return 0;
    size_t qend = q->qend, total = an + ns + ar, i = qend;
    int answered = 0, wrapped = 0;
    int64_t min_ttl = NO_TTL, max_ttl = 0, negative = NO_TTL;
    out->opt_start = 0;
    out->npairs = 0;
    for (size_t idx = 0; idx < total; idx++) {
        size_t start = i;
        long e = name_end(reply, i, n);
        if (e < 0 || (size_t)e + 10 > n) return 0;
        i = (size_t)e;
        uint16_t rtype = be16(reply + i);
        int64_t ttl = be32(reply + i + 4);
        size_t end = i + 10 + be16(reply + i + 8);
        if (end > n) return 0;
        if (rtype == T_OPT) {
            /* stripped and re-added per client: only as the last record, without an
             * extended rcode */
            if (idx != total - 1 || idx < an + ns || ttl >> 24) return 0;
            out->opt_start = start;
        } else {
            if (ttl > 0x7FFFFFFF) { /* RFC 2181 §8: the top bit set means zero */
                ttl = 0;
                wrapped = 1;
            }
            if (out->npairs >= FD_MAX_RECORDS) return 0; /* cannot be: see admission.h */
            out->ttls[2 * out->npairs] = (uint32_t)(i + 4 - qend);
            out->ttls[2 * out->npairs + 1] = (uint32_t)ttl;
            out->npairs++;
            if (ttl < min_ttl) min_ttl = ttl;
            if (ttl > max_ttl) max_ttl = ttl;
            if (idx < an) {
                if (rtype == q->qtype || q->qtype == T_ANY) answered = 1;
            } else if (idx < an + ns && rtype == T_SOA && end - i - 10 >= 22) {
                int64_t minimum = be32(reply + end - 4);
                int64_t soa = ttl < minimum ? ttl : minimum;
                if (soa < negative) negative = soa;
            }
        }
        i = end;
    }
    if (i != n) return 0;
    out->as_is = 0;
    if (rcode == SERVFAIL) {
        if (cfg->servfail_ttl <= 0) return 0;
        out->kind = FD_SERVFAIL_KIND;
        out->life = cfg->servfail_ttl;
        shown(out, cfg->servfail_ttl, 0);
        return 1;
    }
    if (rcode == NOERROR && answered) {
        int64_t life = clamp(min_ttl, cfg->min_ttl, cfg->max_ttl);
        out->kind = FD_SUCCESS;
        out->life = life;
        if (life == min_ttl && max_ttl <= cfg->max_ttl) {
            out->as_is = !wrapped; /* the upstream's TTLs */
            return 1;
        }
        shown(out, life, cfg->max_ttl);
        return 1;
    }
    /* NXDOMAIN or NODATA: only with an SOA to time it, or a negative TTL of its own */
    if (negative == NO_TTL) {
        if (hint < 0) return 0;
        negative = hint;
    }
    int64_t life = clamp(negative < min_ttl ? negative : min_ttl, cfg->min_ttl,
                         cfg->denial_max_ttl);
    out->kind = FD_DENIAL;
    out->life = life;
    shown(out, life, 0);
    return 1;
}
