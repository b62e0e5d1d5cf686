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

/* One form. Shared by the table, the dirty list and queued replies; freed at refs == 0. */
typedef struct fd_form {
    uint64_t hash;
    PyObject *form;  /* bytes: the key */
    PyObject *body;  /* bytes: the reply without its ID */
    PyObject *token; /* Python's Front: handed back by fold() and late() */
    double until;    /* answer while now < until (CLOCK_MONOTONIC seconds) */
    uint64_t n;      /* hits within FIRST_BUCKET since the last fold */
    double secs;     /* their summed duration */
    uint32_t refs;
    uint8_t dirty; /* in the dirty list (has hits to fold) */
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
/* 1 installed, 0 refused (full), -1 error set */
int fd_forms_put(fd_forms *t, PyObject *form, PyObject *body, double until, PyObject *token);
void fd_forms_del(fd_forms *t, const unsigned char *key, size_t len);
void fd_forms_clear(fd_forms *t);
/* Whether one more form can join the dirty list (`reserved` more are already promised). */
static inline int fd_forms_countable(const fd_forms *t, const fd_form *f, size_t reserved) {
    return f->dirty || t->ndirty + reserved < t->dirty_cap;
}
/* Count a hit of `secs` on f (the caller checked fd_forms_countable when it queued it). */
void fd_forms_count(fd_forms *t, fd_form *f, double secs);
/* [(token, n, secs)] for every dirty form, zeroed; NULL with an error set. */
PyObject *fd_forms_fold(fd_forms *t);

static inline void fd_form_incref(fd_form *f) { f->refs++; }
void fd_form_decref(fd_form *f);

#endif
