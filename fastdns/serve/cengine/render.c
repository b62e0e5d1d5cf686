/* The client's reply to a relayed answer (render.h). */
#include "render.h"

#include <string.h>

#define QR_AA 0x0400
#define TC 0x0200
#define RD 0x0100
#define RA 0x0080
#define AD 0x0020

static void put16(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* compose.splice: the client's ID, RD and question bytes, RA set; the rest as it came. */
static size_t splice(const uint8_t *reply, size_t n, const uint8_t *query,
                     const struct fd_query *q, uint8_t *out, size_t cap) {
    size_t qlen = (size_t)q->qend - 12;
    if (n < 12 || n > cap) return 0;
    memcpy(out, reply, n);
    memcpy(out, query, 2);
    out[2] = (uint8_t)((reply[2] & 0xFE) | (query[2] & 1));
    out[3] = (uint8_t)(reply[3] | RA);
    if (12 + qlen > n) { /* as Python's slicing: the question, then nothing of the reply */
        if (12 + qlen > cap) return 0;
        memcpy(out + 12, query + 12, qlen);
        return 12 + qlen;
    }
    memcpy(out + 12, query + 12, qlen);
    return n;
}

size_t fd_render(const uint8_t *reply, size_t n, const uint8_t *query, const struct fd_query *q,
                 const fd_verdict *v, const fd_render_cfg *cfg, uint8_t *out, size_t cap) {
    int stored = v != NULL && v->life > 0 &&
                 (v->kind == FD_SUCCESS ? cfg->capacity : cfg->denial_capacity) > 0;
    if (!stored) return splice(reply, n, query, q, out, cap);
    /* PacketCache: the entry keeps the body after the question without OPT; the header is
     * the cache's own (not authoritative, RA, AD only for DO, the client's RD), counted with
     * our OPT when the client sent one */
    size_t qend = q->qend, body_end = v->opt_start ? v->opt_start : n;
    if (body_end < qend || body_end > n) return 0;
    size_t qlen = qend - 12, blen = body_end - qend, optlen = q->has_opt ? 11 : 0;
    size_t total = 12 + qlen + blen + optlen;
    if (total > cap || total > 65535) return 0; /* a truncated rendering: Python's */
    uint32_t flags = (uint32_t)(reply[2] << 8 | reply[3]);
    flags = (flags & ~(uint32_t)(QR_AA | TC)) | RA;
    if (!q->do_bit) flags &= ~(uint32_t)AD;
    flags = (flags & ~(uint32_t)RD) | (query[2] & 1 ? RD : 0);
    uint32_t an = (uint32_t)(reply[6] << 8 | reply[7]), ns = (uint32_t)(reply[8] << 8 | reply[9]);
    uint32_t ar = (uint32_t)(reply[10] << 8 | reply[11]);
    ar = ar - (v->opt_start ? 1 : 0) + (q->has_opt ? 1 : 0);
    memcpy(out, query, 2);
    put16(out + 2, flags);
    put16(out + 4, 1);
    put16(out + 6, an);
    put16(out + 8, ns);
    put16(out + 10, ar & 0xFFFF);
    memcpy(out + 12, query + 12, qlen);
    uint8_t *body = out + 12 + qlen;
    memcpy(body, reply + qend, blen);
    if (!v->as_is) /* the TTLs the entry shows at age 0 (entry.py retime) */
        for (size_t k = 0; k < v->npairs; k++) {
            size_t off = v->ttls[2 * k];
            if (off + 4 > blen) return 0;
            put32(body + off, v->ttls[2 * k + 1]);
        }
    if (optlen) { /* compose.opt_record: root, OPT, our size, DO echoed, no data */
        uint8_t *o = body + blen;
        o[0] = 0;
        put16(o + 1, 41);
        put16(o + 3, cfg->opt_size);
        put32(o + 5, q->do_bit ? 0x8000 : 0);
        put16(o + 9, 0);
    }
    return total;
}
