/* The mirrored cache keys (keys.h). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "keys.h"

#include <string.h>

#include "forms.h" /* fd_hash */

#define EMPTY 0
#define TOMB 1
#define MIN_CAP 1024

static uint64_t key_hash(const fd_keys *k, const uint8_t *key, size_t len) {
    uint64_t h = fd_hash(key, len, k->seed);
    return h < 2 ? h + 2 : h;
}

int fd_keys_init(fd_keys *k, uint64_t seed) {
    k->slots = PyMem_Calloc(MIN_CAP, sizeof(uint64_t));
    if (k->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    k->cap = MIN_CAP;
    k->count = k->tombs = 0;
    k->seed = seed;
    return 0;
}

void fd_keys_free(fd_keys *k) {
    PyMem_Free(k->slots);
    k->slots = NULL;
    k->cap = k->count = k->tombs = 0;
}

/* The slot holding h, or the first empty one after its run (linear probing). */
static size_t probe(const uint64_t *slots, size_t cap, uint64_t h) {
    size_t mask = cap - 1, i = (size_t)h & mask;
    while (slots[i] != EMPTY && slots[i] != h) i = (i + 1) & mask;
    return i;
}

static int rehash(fd_keys *k, size_t cap) {
    uint64_t *fresh = PyMem_Calloc(cap, sizeof(uint64_t));
    if (fresh == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (size_t i = 0; i < k->cap; i++) {
        uint64_t h = k->slots[i];
        if (h >= 2) fresh[probe(fresh, cap, h)] = h;
    }
    PyMem_Free(k->slots);
    k->slots = fresh;
    k->cap = cap;
    k->tombs = 0;
    return 0;
}

int fd_keys_add(fd_keys *k, const uint8_t *key, size_t len) {
    if (k->slots == NULL) return 0;
    uint64_t h = key_hash(k, key, len);
    size_t mask = k->cap - 1, i = (size_t)h & mask, tomb = (size_t)-1;
    while (k->slots[i] != EMPTY) {
        if (k->slots[i] == h) return 0; /* a member already */
        if (k->slots[i] == TOMB && tomb == (size_t)-1) tomb = i;
        i = (i + 1) & mask;
    }
    if (tomb != (size_t)-1) {
        k->slots[tomb] = h;
        k->tombs--;
    } else {
        k->slots[i] = h;
    }
    k->count++;
    /* at most half full, tombstones included: probes stay short */
    if (2 * (k->count + k->tombs) > k->cap) {
        size_t cap = k->cap;
        while (2 * k->count > cap / 2 && cap < ((size_t)1 << 40)) cap *= 2;
        if (rehash(k, cap) < 0) return -1;
    }
    return 0;
}

void fd_keys_discard(fd_keys *k, const uint8_t *key, size_t len) {
    if (k->slots == NULL || k->count == 0) return;
    uint64_t h = key_hash(k, key, len);
    size_t i = probe(k->slots, k->cap, h);
    if (k->slots[i] != h) return;
    k->slots[i] = TOMB;
    k->count--;
    k->tombs++;
}

int fd_keys_has(const fd_keys *k, const uint8_t *key, size_t len) {
    if (k->slots == NULL || k->count == 0) return 0;
    uint64_t h = key_hash(k, key, len);
    return k->slots[probe(k->slots, k->cap, h)] == h;
}

void fd_keys_clear(fd_keys *k) {
    if (k->slots == NULL) return;
    if (k->cap > MIN_CAP) { /* give the memory of a large cache back */
        uint64_t *fresh = PyMem_Calloc(MIN_CAP, sizeof(uint64_t));
        if (fresh != NULL) {
            PyMem_Free(k->slots);
            k->slots = fresh;
            k->cap = MIN_CAP;
        } else {
            memset(k->slots, 0, k->cap * sizeof(uint64_t));
        }
    } else {
        memset(k->slots, 0, k->cap * sizeof(uint64_t));
    }
    k->count = k->tombs = 0;
}
