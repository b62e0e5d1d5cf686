/* The ready-reply table (forms.h). */
#include "forms.h"

#include <string.h>

uint64_t fd_hash(const unsigned char *p, size_t n, uint64_t seed) {
    /* A seeded multiply-xorshift over 8-byte words (splitmix64's mixer): keys come from
     * packets, so the seed is random per engine and the table is never more than half full. */
    uint64_t h = seed ^ ((uint64_t)n * 0x9E3779B97F4A7C15ULL);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ULL;
        h ^= h >> 31;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0x94D049BB133111EBULL;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ULL;
    h ^= h >> 32;
    return h;
}

int fd_forms_init(fd_forms *t, size_t max, size_t dirty_cap, uint64_t seed) {
    size_t slots = 16;
    while (slots < 2 * max) slots <<= 1;
    memset(t, 0, sizeof(*t));
    t->slots = PyMem_Calloc(slots, sizeof(fd_form *));
    t->dirty = PyMem_Calloc(dirty_cap, sizeof(fd_form *));
    if (t->slots == NULL || t->dirty == NULL) {
        PyMem_Free(t->slots);
        PyMem_Free(t->dirty);
        t->slots = NULL;
        t->dirty = NULL;
        PyErr_NoMemory();
        return -1;
    }
    t->mask = slots - 1;
    t->max = max;
    t->dirty_cap = dirty_cap;
    t->seed = seed;
    return 0;
}

void fd_form_decref(fd_form *f) {
    if (--f->refs) return;
    Py_XDECREF(f->form);
    Py_XDECREF(f->token);
    PyMem_Free(f);
}

static size_t find(const fd_forms *t, const unsigned char *key, size_t len, uint64_t h) {
    size_t i = h & t->mask;
    for (;;) {
        fd_form *f = t->slots[i];
        if (f == NULL) return i;
        if (f->hash == h && (size_t)PyBytes_GET_SIZE(f->form) == len &&
            memcmp(PyBytes_AS_STRING(f->form), key, len) == 0)
            return i;
        i = (i + 1) & t->mask;
    }
}

fd_form *fd_forms_get(const fd_forms *t, const unsigned char *key, size_t len) {
    if (t->slots == NULL) return NULL;
    return t->slots[find(t, key, len, fd_hash(key, len, t->seed))];
}

static void remove_at(fd_forms *t, size_t i) {
    /* Backward-shift deletion: move later members of the probe run into the hole. */
    fd_form *gone = t->slots[i];
    t->slots[i] = NULL;
    t->count--;
    size_t j = i;
    for (;;) {
        j = (j + 1) & t->mask;
        fd_form *f = t->slots[j];
        if (f == NULL) break;
        size_t k = f->hash & t->mask; /* where f wants to be */
        /* f may move to i when i lies cyclically in [k, j) */
        int movable = (i <= j) ? (k <= i || k > j) : (k <= i && k > j);
        if (movable) {
            t->slots[i] = f;
            t->slots[j] = NULL;
            i = j;
        }
    }
    fd_form_decref(gone); /* last: the table is consistent when Python code runs */
}

int fd_forms_put(fd_forms *t, PyObject *form, const fd_install *in, PyObject *token) {
    if (t->slots == NULL) return 0;
    const unsigned char *key = (const unsigned char *)PyBytes_AS_STRING(form);
    size_t len = (size_t)PyBytes_GET_SIZE(form);
    uint64_t h = fd_hash(key, len, t->seed);
    size_t i = find(t, key, len, h);
    if (t->slots[i] != NULL) {
        remove_at(t, i); /* replaced: its counts stay in the dirty list */
        i = find(t, key, len, h);
    }
    if (t->count >= t->max) return 0;
    size_t tbytes = in->nttls * 2 * sizeof(uint32_t);
    fd_form *f = PyMem_Calloc(1, sizeof(fd_form) + tbytes + in->blen + 1);
    if (f == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    f->hash = h;
    f->form = Py_NewRef(form);
    f->token = Py_NewRef(token);
    if (tbytes) memcpy(f->data, in->ttls, tbytes);
    f->nttls = in->nttls;
    f->body = (unsigned char *)f->data + tbytes;
    if (in->blen) memcpy(f->body, in->body, in->blen);
    f->blen = in->blen;
    f->stored = in->stored;
    f->stamp = in->stamp;
    f->until = in->until;
    f->refs = 1;
    t->slots[i] = f;
    t->count++;
    return 1;
}

void fd_forms_del(fd_forms *t, const unsigned char *key, size_t len) {
    if (t->slots == NULL) return;
    size_t i = find(t, key, len, fd_hash(key, len, t->seed));
    if (t->slots[i] != NULL) remove_at(t, i);
}

void fd_forms_clear(fd_forms *t) {
    if (t->slots == NULL) return;
    for (size_t i = 0; i <= t->mask; i++) {
        fd_form *f = t->slots[i];
        if (f != NULL) {
            t->slots[i] = NULL;
            t->count--;
            fd_form_decref(f);
        }
    }
}

void fd_form_retime(fd_form *f, long long age) {
    /* fastdns/resolve/cache/entry.py retime: each TTL field shows its TTL at age 0 - age. */
    for (size_t i = 0; i < f->nttls; i++) {
        uint32_t off = f->data[2 * i], ttl = f->data[2 * i + 1];
        uint32_t v = (long long)ttl > age ? (uint32_t)((long long)ttl - age) : 0;
        unsigned char *p = f->body + off; /* off + 4 <= blen: checked at install */
        p[0] = (unsigned char)(v >> 24);
        p[1] = (unsigned char)(v >> 16);
        p[2] = (unsigned char)(v >> 8);
        p[3] = (unsigned char)v;
    }
    f->stamp = age;
}

void fd_forms_count(fd_forms *t, fd_form *f, double at, double secs) {
    if (!f->dirty) {
        if (t->ndirty >= t->dirty_cap) return; /* not reached: checked when queued */
        f->dirty = 1;
        fd_form_incref(f);
        t->dirty[t->ndirty++] = f;
        f->first = at;
    }
    f->last = at;
    int slot = fd_time_slot(secs);
    if (slot == 0) {
        f->n++;
        f->secs += secs;
    } else {
        f->late++;
        f->late_secs += secs;
        f->late_b[slot]++;
    }
}

static PyObject *slots_tuple(const fd_form *f) {
    if (f->late == 0) Py_RETURN_NONE;
    PyObject *out = PyTuple_New(FD_TIME_BUCKETS);
    if (out == NULL) return NULL;
    for (int i = 0; i < FD_TIME_BUCKETS; i++) {
        PyObject *v = PyLong_FromUnsignedLong(f->late_b[i]);
        if (v == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, i, v);
    }
    return out;
}

PyObject *fd_forms_fold(fd_forms *t) {
    PyObject *out = PyList_New(0);
    if (out == NULL) return NULL;
    for (size_t i = 0; i < t->ndirty; i++) {
        fd_form *f = t->dirty[i];
        PyObject *slots = slots_tuple(f);
        PyObject *item = slots == NULL ? NULL
                                       : Py_BuildValue("(OKdKdNdd)", f->token,
                                                       (unsigned long long)f->n, f->secs,
                                                       (unsigned long long)f->late, f->late_secs,
                                                       slots, f->first, f->last);
        if (item == NULL || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            Py_DECREF(out);
            return NULL; /* nothing zeroed: the next fold reports them */
        }
        Py_DECREF(item);
    }
    size_t n = t->ndirty;
    t->ndirty = 0;
    for (size_t i = 0; i < n; i++) {
        fd_form *f = t->dirty[i];
        f->dirty = 0;
        f->n = f->late = 0;
        f->secs = f->late_secs = 0.0;
        memset(f->late_b, 0, sizeof(f->late_b));
        fd_form_decref(f);
    }
    return out;
}

void fd_forms_free(fd_forms *t) {
    fd_forms_clear(t);
    for (size_t i = 0; i < t->ndirty; i++) fd_form_decref(t->dirty[i]);
    t->ndirty = 0;
    PyMem_Free(t->slots);
    PyMem_Free(t->dirty);
    t->slots = NULL;
    t->dirty = NULL;
}
