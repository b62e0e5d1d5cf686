/* wire.h: the query parser and the reply checks of the compiled datapath, in pure C.
 *
 * The same verdicts as fastdns/dns/wire.py (parse_query, question_matches, reply_id,
 * reply_rcode, truncated): the differential fuzz (tests/fuzz/test_fuzz_cwire.py,
 * bench/fuzz.py) holds them equal. No Python API, no allocation, no recursion; every read of
 * packet bytes is bounds-checked against the length the caller gives. Not reentrant:
 * fd_parse_query keeps the names it has checked in a static table (wire.c), so one thread at a
 * time (the bindings hold the GIL).
 */
#ifndef FASTDNS_CENGINE_WIRE_H
#define FASTDNS_CENGINE_WIRE_H

#include <stddef.h>
#include <stdint.h>

#define FD_MAX_NAME 255 /* RFC 1035 §2.3.4 */
#define FD_MIN_UDP 512  /* RFC 1035 §4.2.1 */
/* lower-cased qname + type + class + DO byte + CD byte: Query.key in fastdns/dns/wire.py */
#define FD_KEY_MAX (FD_MAX_NAME + 6)

/* fd_parse_query's verdicts: a query, a drop (no reply possible), or the rcode to answer */
#define FD_QUERY_OK 0
#define FD_QUERY_DROP (-1)
#define FD_FORMERR 1 /* RFC 1035 §4.1.1 */
#define FD_NOTIMP 4

struct fd_query {
    uint16_t id;
    uint16_t flags;
    uint16_t qname_off;    /* always 12: the question follows the header */
    uint16_t qname_len;    /* wire length of the name, its final zero byte included */
    uint16_t qtype;
    uint16_t qclass;
    uint16_t qend;         /* offset just past the question */
    uint16_t udp_size;     /* the client's advertised UDP size, 512 without OPT */
    uint8_t has_opt;
    uint8_t do_bit;        /* DO of the OPT TTL field (RFC 3225) */
    uint8_t edns_version;
    uint16_t key_len;
    uint8_t key[FD_KEY_MAX];
};

/* Read the header, the one question and any OPT record of the query in buf[0:n].
 * Returns FD_QUERY_OK (and fills *out), FD_QUERY_DROP, FD_FORMERR or FD_NOTIMP; *out is
 * unspecified unless FD_QUERY_OK. */
int fd_parse_query(const uint8_t *buf, size_t n, struct fd_query *out);

/* 1 when the reply is a response with exactly one question equal to the query's (the query
 * buffer parsed by fd_parse_query as q), ignoring ASCII case in the name (RFC 4343). */
int fd_question_matches(const uint8_t *reply, size_t n, const uint8_t *query,
                        const struct fd_query *q);

/* Header fields of a reply; -1 when the reply is shorter than a DNS header (12 bytes): the
 * relay drops those before it looks (fastdns/resolve/forward/upsock.py). */
int fd_reply_id(const uint8_t *reply, size_t n);
int fd_reply_rcode(const uint8_t *reply, size_t n);
int fd_truncated(const uint8_t *reply, size_t n); /* TC, RFC 1035 §4.1.1 */

#endif
