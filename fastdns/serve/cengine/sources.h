/* The sources that pass the gate without work: Python's Gate.verdicts PASS entries
 * (fastdns/serve/gate.py), told one by one. Only these are answered in C; every other source
 * (denied, rate limited, not judged yet) goes up to Python, which applies the ACL and the
 * limiter exactly as on the Python datapath. Bounded like Gate.verdicts: emptied when full.
 */
#ifndef FASTDNS_CENGINE_SOURCES_H
#define FASTDNS_CENGINE_SOURCES_H

#include <stddef.h>
#include <stdint.h>

#define FD_SOURCES_MAX 4096 /* Gate CAPACITY */

typedef struct {
    uint8_t used;
    uint8_t family; /* 4 or 6 */
    uint8_t addr[16];
} fd_source;

typedef struct {
    fd_source *slots;
    size_t mask;
    size_t count;
    uint64_t seed;
} fd_sources;

int fd_sources_init(fd_sources *s, uint64_t seed);
void fd_sources_free(fd_sources *s);
int fd_sources_has(const fd_sources *s, uint8_t family, const uint8_t addr[16]);
void fd_sources_add(fd_sources *s, uint8_t family, const uint8_t addr[16]);
void fd_sources_clear(fd_sources *s);

#endif
