/* wire.c: the query parser and the reply checks (wire.h), rule for rule those of
 * fastdns/dns/wire.py. Where a rule looks odd, it is odd there too: the verdicts must be the
 * same bytes for bytes (tests/fuzz/test_fuzz_cwire.py), and policy lives once, in Python.
 *
 * Every read is preceded by a check against n. Loops are bounded: the question name by 255
 * bytes, the record walk by n (each record takes at least 11 bytes), a compression chain by
 * its rules (a pointer always points backwards; labels add up to at most 255 bytes), and
 * all the chains of a packet by its length (check_pointer_target walks an offset once).
 */
#include "wire.h"

#include <string.h>

#define QR 0x8000
#define OPCODE_MASK 0x7800
#define CD 0x0010
#define TYPE_OPT 41     /* RFC 6891 §6.1.2 */
#define DO_BIT 0x8000u  /* in the OPT TTL field, RFC 3225 §3 */
#define BAD ((size_t)-1)

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)((p[0] << 8) | p[1]); }

static inline uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline uint8_t ascii_lower(uint8_t c) {
    return (c >= 'A' && c <= 'Z') ? (uint8_t)(c + ('a' - 'A')) : c;
}

/* The names of the packet being parsed already found sound (wire._check_pointer_target's
 * ``checked``): checked_len[i] is the label bytes from offset i to the name's end, valid when
 * checked_gen[i] is this packet's generation, so nothing is cleared between packets. A walk
 * only visits offsets below 0x4000 + 255 (a pointer reaches 14 bits, then at most 255 bytes
 * of labels follow); any other offset is simply never remembered. Static state: the parser is
 * not reentrant (wire.h), its bindings run with the GIL held. */
#define CHECKED_SLOTS (0x4000 + FD_MAX_NAME + 1)
static uint32_t checked_gen[CHECKED_SLOTS];
static uint8_t checked_len[CHECKED_SLOTS];
static uint32_t generation;

/* Forget the checked names of the previous packet. */
static void new_packet(void) {
    if (++generation == 0) { /* after 2^32 packets: the stamps of old ones could match */
        memset(checked_gen, 0, sizeof checked_gen);
        generation = 1;
    }
}

static inline int checked(size_t i) { return i < CHECKED_SLOTS && checked_gen[i] == generation; }

/* Follow a compressed name from i to its end, every hop moving backwards
 * (wire._check_pointer_target). 0 when sound, -1 on any damage. The walk stops at an offset
 * already checked in this packet and adds its length: the verdict is the one a walk to the
 * end gives (past a checked offset only the length can fail, and it only grows), and every
 * offset is walked once a packet. A sound walk is walked again to remember its offsets (it
 * visits each once: a repeat would be a loop), which needs no list of them. */
static int check_pointer_target(const uint8_t *buf, size_t start, size_t n) {
    size_t total = 0, i = start;
    for (;;) {
        if (checked(i)) {
            total += checked_len[i];
            if (total > FD_MAX_NAME) return -1;
            break;
        }
        if (i >= n) return -1;
        uint8_t len = buf[i];
        if (len == 0) break;
        if ((len & 0xC0) == 0xC0) {
            if (i + 2 > n) return -1;
            size_t target = ((size_t)(len & 0x3F) << 8) | buf[i + 1];
            if (target >= i) return -1; /* RFC 1035 §4.1.4: a prior occurrence */
            i = target;
            continue;
        }
        if (len & 0xC0) return -1;
        total += (size_t)len + 1;
        if (total > FD_MAX_NAME) return -1;
        i += (size_t)len + 1;
    }
    /* sound: the same steps again (every read below was bounds-checked by the walk above),
     * remembering each offset's length to the end */
    size_t before = 0;
    for (i = start; !checked(i);) {
        if (i < CHECKED_SLOTS) {
            checked_gen[i] = generation;
            checked_len[i] = (uint8_t)(total - before);
        }
        uint8_t len = buf[i];
        if (len == 0) break;
        if ((len & 0xC0) == 0xC0) {
            i = ((size_t)(len & 0x3F) << 8) | buf[i + 1];
            continue;
        }
        before += (size_t)len + 1;
        i += (size_t)len + 1;
    }
    return 0;
}

/* The offset after a (possibly compressed) name at i, or BAD (wire.skip_name). */
static size_t skip_name(const uint8_t *buf, size_t i, size_t n) {
    size_t total = 0;
    for (;;) {
        if (i >= n) return BAD;
        uint8_t len = buf[i];
        if (len == 0) return i + 1;
        uint8_t kind = len & 0xC0;
        if (kind == 0xC0) {
            if (i + 2 > n) return BAD;
            size_t target = ((size_t)(len & 0x3F) << 8) | buf[i + 1];
            if (target >= i) return BAD; /* forward or looping pointer */
            if (check_pointer_target(buf, target, n) < 0) return BAD;
            return i + 2;
        }
        if (kind) return BAD; /* reserved label types 0x40, 0x80 */
        total += (size_t)len + 1;
        if (total > FD_MAX_NAME) return BAD;
        i += (size_t)len + 1;
    }
}

/* Skip the answer and authority records, read the additional section for OPT
 * (wire._read_records). FD_QUERY_OK or FD_FORMERR. */
static int read_records(const uint8_t *buf, size_t i, size_t n, uint32_t skip, uint32_t ar,
                        struct fd_query *q) {
    uint32_t count = skip + ar;
    new_packet();
    for (uint32_t idx = 0; idx < count; idx++) {
        i = skip_name(buf, i, n);
        if (i == BAD) return FD_FORMERR;
        if (i + 10 > n) return FD_FORMERR;
        uint16_t rtype = be16(buf + i);
        uint16_t rclass = be16(buf + i + 2);
        uint32_t ttl = be32(buf + i + 4);
        uint16_t rdlen = be16(buf + i + 8);
        i += 10 + (size_t)rdlen;
        if (i > n) return FD_FORMERR;
        if (rtype == TYPE_OPT && idx >= skip) {
            if (q->has_opt) return FD_FORMERR; /* RFC 6891 §6.1.1: at most one OPT */
            q->has_opt = 1;
            q->udp_size = rclass > FD_MIN_UDP ? rclass : FD_MIN_UDP;
            q->edns_version = (uint8_t)((ttl >> 16) & 0xFF);
            q->do_bit = (ttl & DO_BIT) ? 1 : 0;
        }
    }
    return i == n ? FD_QUERY_OK : FD_FORMERR;
}

int fd_parse_query(const uint8_t *buf, size_t n, struct fd_query *out) {
    if (n < 12) return FD_QUERY_DROP;
    uint16_t flags = be16(buf + 2);
    if (flags & QR) return FD_QUERY_DROP; /* a response, not a query */
    if (flags & OPCODE_MASK) return FD_NOTIMP;
    if (be16(buf + 4) != 1) return FD_FORMERR; /* QDCOUNT */
    uint16_t an = be16(buf + 6), ns = be16(buf + 8), ar = be16(buf + 10);
    /* The question name: no compression allowed (only the header precedes it). */
    size_t i = 12;
    for (;;) {
        if (i >= n) return FD_FORMERR;
        uint8_t len = buf[i];
        if (len == 0) break;
        if (len > 63) return FD_FORMERR;
        i += (size_t)len + 1;
        if (i - 12 > FD_MAX_NAME - 1) return FD_FORMERR;
    }
    size_t name_end = i + 1;
    size_t qend = name_end + 4;
    if (qend > n) return FD_FORMERR;
    out->id = be16(buf);
    out->flags = flags;
    out->qname_off = 12;
    out->qname_len = (uint16_t)(name_end - 12);
    out->qtype = be16(buf + name_end);
    out->qclass = be16(buf + name_end + 2);
    out->qend = (uint16_t)qend;
    out->has_opt = 0;
    out->udp_size = FD_MIN_UDP;
    out->do_bit = 0;
    out->edns_version = 0;
    if (an || ns || ar) {
        int rc = read_records(buf, qend, n, (uint32_t)an + ns, ar, out);
        if (rc != FD_QUERY_OK) return rc;
    } else if (qend != n) {
        return FD_FORMERR; /* trailing bytes after the question */
    }
    /* the key: qname lower-cased, type and class as sent, DO, CD */
    size_t k = 0;
    for (size_t j = 12; j < name_end; j++) out->key[k++] = ascii_lower(buf[j]);
    memcpy(out->key + k, buf + name_end, 4);
    k += 4;
    out->key[k++] = out->do_bit;
    out->key[k++] = (flags & CD) ? 1 : 0;
    out->key_len = (uint16_t)k;
    return FD_QUERY_OK;
}

int fd_question_matches(const uint8_t *reply, size_t n, const uint8_t *query,
                        const struct fd_query *q) {
    size_t qend = q->qend;
    if (n < qend || !(reply[2] & 0x80)) return 0; /* qend >= 17: reply[2] is there */
    if (reply[4] != 0 || reply[5] != 1) return 0; /* exactly one question */
    size_t end = qend - 4;
    /* type and class compare exactly: a case fold would equate qtype 0x0041 with 0x0061 */
    if (memcmp(reply + end, query + end, 4) != 0) return 0;
    for (size_t j = 12; j < end; j++) {
        if (ascii_lower(reply[j]) != ascii_lower(query[j])) return 0; /* RFC 4343 */
    }
    return 1;
}

int fd_reply_id(const uint8_t *reply, size_t n) { return n < 12 ? -1 : be16(reply); }

int fd_reply_rcode(const uint8_t *reply, size_t n) { return n < 12 ? -1 : reply[3] & 0x0F; }

int fd_truncated(const uint8_t *reply, size_t n) { return n < 12 ? -1 : (reply[2] & 0x02) != 0; }
