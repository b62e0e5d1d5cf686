/* The passing-source set (sources.h). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include "forms.h" /* fd_hash */
#include "sources.h"

int fd_sources_init(fd_sources *s, uint64_t seed) {
    memset(s, 0, sizeof(*s));
    s->slots = PyMem_Calloc(2 * FD_SOURCES_MAX, sizeof(fd_source));
    if (s->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    s->mask = 2 * FD_SOURCES_MAX - 1;
    s->seed = seed;
    return 0;
}

void fd_sources_free(fd_sources *s) {
    PyMem_Free(s->slots);
    s->slots = NULL;
    s->count = 0;
}

static size_t find(const fd_sources *s, uint8_t family, const uint8_t addr[16]) {
    size_t i = fd_hash(addr, family == 4 ? 4 : 16, s->seed ^ family) & s->mask;
    for (;;) {
        const fd_source *e = &s->slots[i];
        if (!e->used) return i;
        if (e->family == family && memcmp(e->addr, addr, 16) == 0) return i;
        i = (i + 1) & s->mask;
    }
}

int fd_sources_has(const fd_sources *s, uint8_t family, const uint8_t addr[16]) {
    if (s->slots == NULL || s->count == 0) return 0;
    return s->slots[find(s, family, addr)].used;
}

void fd_sources_add(fd_sources *s, uint8_t family, const uint8_t addr[16]) {
    if (s->slots == NULL) return;
    size_t i = find(s, family, addr);
    if (s->slots[i].used) return;
    if (s->count >= FD_SOURCES_MAX) { /* full: start again, as Gate.judge does */
        fd_sources_clear(s);
        i = find(s, family, addr);
    }
    s->slots[i].used = 1;
    s->slots[i].family = family;
    memcpy(s->slots[i].addr, addr, 16);
    s->count++;
}

void fd_sources_clear(fd_sources *s) {
    if (s->slots == NULL) return;
    memset(s->slots, 0, (s->mask + 1) * sizeof(fd_source));
    s->count = 0;
}
