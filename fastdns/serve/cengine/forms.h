/* The ready-reply table: query form (the bytes after the ID) -> reply body, mirrored from
 * Python's FrontTable (fastdns/resolve/cache/front.py), which decides what is installed and
 * evicts. Open addressing, linear probing, backward-shift deletion: no tombstones, no growth;
 * at most `max` forms (an install beyond that is refused: Python still answers the form).
 */
#ifndef FASTDNS_CENGINE_FORMS_H
#define FASTDNS_CENGINE_FORMS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#include "tally.h" /* FD_TIME_BUCKETS: a hit slower than the first is counted in its slot */

/* One form. Shared by the table, the dirty list and queued replies; freed at refs == 0.
 * Its reply body is its own copy: the TTLs in it are rewritten for the entry's age
 * (fd_form_retime) at most once a second, so every hit is the same two-part iovec. */
typedef struct fd_form {
    uint64_t hash;
    PyObject *form;      /* bytes: the key */
    PyObject *token;     /* Python's Front: handed back by fold() */
    unsigned char *body; /* the reply without its ID (points into data) */
    size_t blen;
    size_t nttls;        /* (offset in body, TTL at age 0) pairs in data */
    double stored;       /* the entry's stored time: age = whole seconds since */
    long long stamp;     /* the age body's TTLs are written for */
    double until;        /* answer while now < until (CLOCK_MONOTONIC seconds) */
    uint64_t n;          /* hits within the first duration bucket since the last fold */
    double secs;         /* their summed duration */
    uint64_t late;       /* slower hits since the last fold */
    double late_secs;    /* their summed duration */
    double first, last;  /* when the first and the last of those hits were read */
    uint32_t late_b[FD_TIME_BUCKETS]; /* the slower hits by duration slot */
    uint32_t refs;
    uint8_t dirty; /* in the dirty list (has hits to fold) */
    uint32_t data[]; /* nttls pairs, then the body */
} fd_form;

typedef struct {
    fd_form **slots;
    size_t mask;  /* slots - 1 (a power of two) */
    size_t count; /* forms in the table */
    size_t max;
    uint64_t seed;
    fd_form **dirty; /* forms with hits since the last fold, live or dropped since */
    size_t ndirty;
    size_t dirty_cap;
} fd_forms;

uint64_t fd_hash(const unsigned char *p, size_t n, uint64_t seed);

int fd_forms_init(fd_forms *t, size_t max, size_t dirty_cap, uint64_t seed);
void fd_forms_free(fd_forms *t);
fd_form *fd_forms_get(const fd_forms *t, const unsigned char *key, size_t len);
/* One install: the body as rendered at age `stamp`, and its TTL fields as (offset, TTL at
 * age 0) pairs, every one checked by the caller to lie inside the body. */
typedef struct {
    const unsigned char *body;
    size_t blen;
    const uint32_t *ttls;
    size_t nttls;
    double until, stored;
    long long stamp;
} fd_install;

/* 1 installed, 0 refused (full), -1 error set */
int fd_forms_put(fd_forms *t, PyObject *form, const fd_install *in, PyObject *token);
void fd_forms_del(fd_forms *t, const unsigned char *key, size_t len);
void fd_forms_clear(fd_forms *t);
/* Whether one more form can join the dirty list (`reserved` more are already promised). */
static inline int fd_forms_countable(const fd_forms *t, const fd_form *f, size_t reserved) {
    return f->dirty || t->ndirty + reserved < t->dirty_cap;
}
/* Write TTL - age into f's body (age: whole seconds since stored; clamped at 0). */
void fd_form_retime(fd_form *f, long long age);
/* Count a hit on f read at `at` that took `secs` (the caller checked fd_forms_countable
 * when it queued it); one slower than the first bucket goes to its duration slot. */
void fd_forms_count(fd_forms *t, fd_form *f, double at, double secs);
/* [(token, n, secs, late, late_secs, slots | None, first, last)] for every dirty form, zeroed;
 * NULL with an error set. */
PyObject *fd_forms_fold(fd_forms *t);

static inline void fd_form_incref(fd_form *f) { f->refs++; }
void fd_form_decref(fd_form *f);

#endif
