/* cirron.core._hot: the C twin of the pure-Python scope hot path in recorder.py.
 *
 * `with ci.scope("step"):` runs inside the user's training step. In Python its enter and exit
 * cost ~0.9 us; the same steps in C cost a fraction of that. This module holds only that path:
 * the base type of cirron.core.recorder.Scope (its fields, __init__, __enter__, __exit__) and a
 * Binding that ties a Scope class to its Recorder. Everything else, including every slow path
 * (a new thread's buffer, a closed parent, an out-of-order close, the depth limit, waking the
 * flusher), calls back into the Recorder's Python methods, so the two implementations cannot
 * drift apart in behaviour: tests run the suite's scope checks against both.
 *
 * The extension is optional. Without a C compiler the build skips it and recorder.py uses its
 * pure-Python Scope; CIRRON_PURE_PYTHON=1 forces that at run time.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

#ifndef CIRRON_HOT_SOURCE /* set by setup.py: the first 16 hex digits of this file's sha256 */
#define CIRRON_HOT_SOURCE "unknown"
#endif

/* Wake the flusher when a thread's close sequence number is a multiple of this + 1. */
#define WAKE_MASK 0x3FFF

static PyObject *s_tb, *s_span_ids, *s_span_close_seq, *s_spans, *s_append, *s_bind,
    *s_new_buffer, *s_live_parent, *s_unwind, *s_wake, *s_depth_drop, *s_id, *s_index, *s_depth, *s_mark_seq,
    *s_marks, *s_kind, *s_point, *s_mark_value, *s_mark_target;
static PyObject *perf_counter_ns_fn; /* time.perf_counter_ns, where no native clock is used */

typedef struct BindingObject BindingObject;
static PyTypeObject ScopeType;

/* Every field is an object slot read and written like a ``__slots__`` entry (T_OBJECT_EX), so
   Python code touching scopes (loop wrappers, framework hooks) gets the interpreter's
   specialised slot access, exactly as with the pure-Python class. */
typedef struct {
    PyObject_HEAD
    PyObject *name;
    PyObject *index;  /* int or None */
    PyObject *attrs;  /* dict */
    PyObject *tb;     /* the ThreadBuffer while open; None when closed or dropped */
    PyObject *parent; /* the enclosing scope or None (set at enter) */
    PyObject *id;     /* int, set at enter */
    PyObject *start;  /* int, perf_counter_ns at enter */
    PyObject *depth;  /* int: 1 for a top-level scope (the session is 0) */
    BindingObject *bind;
} ScopeObject;

/* Whether ``s`` is an open scope. Anything else on the stack counts as closed, so
   live_parent (Python) decides what to do with it. */
static inline int
is_open(PyObject *s)
{
    if (!PyObject_TypeCheck(s, &ScopeType)) {
        return 0;
    }
    PyObject *tb = ((ScopeObject *)s)->tb;
    return tb != NULL && tb != Py_None;
}

/* The same clock as time.perf_counter_ns(): spans timed here and in Python must compare. */
static inline int
now_ns(long long *out)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyTime_t t;
    if (PyTime_PerfCounterRaw(&t) < 0) {
        return -1;
    }
    *out = (long long)t;
    return 0;
#elif defined(__linux__)
    /* CPython 3.11/3.12 on Linux: perf_counter is CLOCK_MONOTONIC. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    *out = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    return 0;
#else
    PyObject *r = PyObject_CallNoArgs(perf_counter_ns_fn);
    if (r == NULL) {
        return -1;
    }
    *out = PyLong_AsLongLong(r);
    Py_DECREF(r);
    return (*out == -1 && PyErr_Occurred()) ? -1 : 0;
#endif
}

/* ---------------------------------------------------------------------------------------- */
/* Binding: what a Scope class needs of its Recorder, without attribute lookups per call.   */

struct BindingObject {
    PyObject_HEAD
    PyObject *rec;     /* the Recorder (its slow-path methods) */
    PyObject *cur;     /* the ContextVar holding the innermost open scope */
    PyObject *tls;     /* threading.local whose .tb is the thread's ThreadBuffer */
    PyObject *root_id; /* the open session span's id, or None */
    Py_ssize_t max_depth;
    /* One-entry cache of the last thread's buffer and the three fields of it the `with` path
       uses, keyed by the interpreter's thread-state id (never reused within a process).
       Cleared when ``tls`` is replaced (a new process state) and by forget() (the Recorder
       swapped a buffer's deques). */
    uint64_t cached_tid;
    PyObject *cached_tb;
    PyObject *cached_ids;   /* tb.span_ids */
    PyObject *cached_seq;   /* tb.span_close_seq */
    PyObject *cached_spans; /* tb.spans.append (bound: no method lookup per record) */
    PyObject *cached_mseq;  /* tb.mark_seq */
    PyObject *cached_marks; /* tb.marks.append */
};

static void
binding_forget(BindingObject *self)
{
    self->cached_tid = 0;
    Py_CLEAR(self->cached_tb);
    Py_CLEAR(self->cached_ids);
    Py_CLEAR(self->cached_seq);
    Py_CLEAR(self->cached_spans);
    Py_CLEAR(self->cached_mseq);
    Py_CLEAR(self->cached_marks);
}

static int
Binding_init(BindingObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"rec", "cur", "tls", "max_depth", NULL};
    PyObject *rec, *cur, *tls;
    Py_ssize_t max_depth;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOn", kwlist, &rec, &cur, &tls, &max_depth)) {
        return -1;
    }
    if (!PyContextVar_CheckExact(cur)) {
        PyErr_SetString(PyExc_TypeError, "Binding: cur must be a contextvars.ContextVar");
        return -1;
    }
    Py_INCREF(rec);
    Py_XSETREF(self->rec, rec);
    Py_INCREF(cur);
    Py_XSETREF(self->cur, cur);
    Py_INCREF(tls);
    Py_XSETREF(self->tls, tls);
    Py_INCREF(Py_None);
    Py_XSETREF(self->root_id, Py_None);
    binding_forget(self);
    self->max_depth = max_depth;
    return 0;
}

static int
Binding_traverse(BindingObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->rec);
    Py_VISIT(self->cur);
    Py_VISIT(self->tls);
    Py_VISIT(self->root_id);
    Py_VISIT(self->cached_tb);
    Py_VISIT(self->cached_ids);
    Py_VISIT(self->cached_seq);
    Py_VISIT(self->cached_spans);
    Py_VISIT(self->cached_mseq);
    Py_VISIT(self->cached_marks);
    return 0;
}

static int
Binding_clear(BindingObject *self)
{
    Py_CLEAR(self->rec);
    Py_CLEAR(self->cur);
    Py_CLEAR(self->tls);
    Py_CLEAR(self->root_id);
    binding_forget(self);
    return 0;
}

static void
Binding_dealloc(BindingObject *self)
{
    PyObject_GC_UnTrack(self);
    Binding_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
Binding_get_tls(BindingObject *self, void *closure)
{
    Py_INCREF(self->tls);
    return self->tls;
}

static int
Binding_set_tls(BindingObject *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        PyErr_SetString(PyExc_AttributeError, "Binding.tls cannot be deleted");
        return -1;
    }
    Py_INCREF(value);
    Py_XSETREF(self->tls, value);
    binding_forget(self); /* a new process state: every thread gets a new buffer */
    return 0;
}

static PyObject *
Binding_get_root_id(BindingObject *self, void *closure)
{
    Py_INCREF(self->root_id);
    return self->root_id;
}

static int
Binding_set_root_id(BindingObject *self, PyObject *value, void *closure)
{
    if (value == NULL) {
        value = Py_None;
    }
    Py_INCREF(value);
    Py_XSETREF(self->root_id, value);
    return 0;
}

static PyGetSetDef Binding_getset[] = {
    {"tls", (getter)Binding_get_tls, (setter)Binding_set_tls, "threading.local of buffers", NULL},
    {"root_id", (getter)Binding_get_root_id, (setter)Binding_set_root_id, "session span id", NULL},
    {NULL},
};

static PyObject *
Binding_forget(BindingObject *self, PyObject *Py_UNUSED(ignored))
{
    binding_forget(self);
    Py_RETURN_NONE;
}

static int thread_buffer(BindingObject *b);

/* Binding.mark(name, value, /, *, kind="point", **attrs): Recorder.mark in C.
   Plain ints, floats, strs and bools are recorded here; any other value goes through
   Recorder.mark_value (Python), which converts it or counts and warns about it. */
static PyObject *
Binding_mark(BindingObject *b, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError,
                     "mark() takes a name and a value as positional arguments (%zd given)",
                     nargs);
        return NULL;
    }
    PyObject *name = args[0], *value = NULL, *kind = s_point, *attrs = NULL;
    PyObject *result = NULL, *f = NULL, *n = NULL, *target = NULL, *rec, *r;
    if (kwnames != NULL) {
        Py_ssize_t nk = PyTuple_GET_SIZE(kwnames);
        for (Py_ssize_t i = 0; i < nk; i++) {
            PyObject *k = PyTuple_GET_ITEM(kwnames, i);
            if (k == s_kind || PyUnicode_Compare(k, s_kind) == 0) {
                kind = args[nargs + i];
                continue;
            }
            if (attrs == NULL && (attrs = PyDict_New()) == NULL) {
                return NULL;
            }
            if (PyDict_SetItem(attrs, k, args[nargs + i]) < 0) {
                goto done;
            }
        }
    }
    if (thread_buffer(b) < 0) {
        goto done;
    }
    value = args[1];
    PyTypeObject *tv = Py_TYPE(value);
    if (tv != &PyFloat_Type && tv != &PyLong_Type && tv != &PyUnicode_Type &&
        tv != &PyBool_Type) {
        value = PyObject_CallMethodObjArgs(b->rec, s_mark_value, name, value, NULL);
        if (value == NULL) {
            goto done;
        }
        if (value == Py_None) { /* not recordable: counted and warned about in Python */
            result = value;
            value = NULL;
            goto done;
        }
        /* mark_value ran Python code: another thread may have run meanwhile and left the
           cache holding its buffer. Look again. */
        if (thread_buffer(b) < 0) {
            goto done;
        }
    }
    else {
        Py_INCREF(value);
    }
    /* Strong references: _mark_target runs Python code too. */
    PyObject *mseq = b->cached_mseq, *marks = b->cached_marks;
    Py_INCREF(mseq);
    Py_INCREF(marks);
    if (PyContextVar_Get(b->cur, Py_None, &f) < 0) {
        goto done2;
    }
    if (f == Py_None) {
        target = b->root_id;
        Py_INCREF(target);
    }
    else if (is_open(f) && ((ScopeObject *)f)->id != NULL) {
        target = ((ScopeObject *)f)->id;
        Py_INCREF(target);
    }
    else if ((target = PyObject_CallMethodOneArg(b->rec, s_mark_target, f)) == NULL) {
        goto done2;
    }
    n = PyIter_Next(mseq);
    if (n == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "cirron: mark sequence exhausted");
        }
        goto done2;
    }
    long long t;
    if (now_ns(&t) < 0 || (r = PyLong_FromLongLong(t)) == NULL) {
        goto done2;
    }
    if ((rec = PyTuple_New(7)) == NULL) {
        Py_DECREF(r);
        goto done2;
    }
    Py_INCREF(n);
    PyTuple_SET_ITEM(rec, 0, n);
    PyTuple_SET_ITEM(rec, 1, r);
    PyTuple_SET_ITEM(rec, 2, target);
    target = NULL;
    Py_INCREF(name);
    PyTuple_SET_ITEM(rec, 3, name);
    Py_INCREF(value);
    PyTuple_SET_ITEM(rec, 4, value);
    Py_INCREF(kind);
    PyTuple_SET_ITEM(rec, 5, kind);
    if (attrs == NULL) { /* never an empty dict: see _RECORDS_UNTRACKABLE */
        Py_INCREF(Py_None);
        PyTuple_SET_ITEM(rec, 6, Py_None);
    }
    else {
        PyTuple_SET_ITEM(rec, 6, attrs);
        attrs = NULL;
    }
    r = PyObject_CallOneArg(marks, rec);
    Py_DECREF(rec);
    if (r == NULL) {
        goto done2;
    }
    Py_DECREF(r);
    long long seqno = PyLong_AsLongLong(n);
    if (seqno == -1 && PyErr_Occurred()) {
        goto done2;
    }
    if (seqno && !(seqno & WAKE_MASK)) { /* a burst of marks: seal before the buffer fills */
        if ((r = PyObject_CallMethodNoArgs(b->rec, s_wake)) == NULL) {
            goto done2;
        }
        Py_DECREF(r);
    }
    Py_INCREF(Py_None);
    result = Py_None;
done2:
    Py_DECREF(mseq);
    Py_DECREF(marks);
done:
    Py_XDECREF(value);
    Py_XDECREF(attrs);
    Py_XDECREF(f);
    Py_XDECREF(n);
    Py_XDECREF(target);
    return result;
}

static PyMethodDef Binding_methods[] = {
    {"mark", (PyCFunction)(void (*)(void))Binding_mark, METH_FASTCALL | METH_KEYWORDS,
     "mark($self, name, value, /, *, kind='point', **attrs)\n--\n\n"
     "Record one named value against the innermost open scope. Never raises for a bad\n"
     "value: it is counted and warned about once (see cirron.core.recorder.Recorder.mark)."},
    {"forget", (PyCFunction)Binding_forget, METH_NOARGS,
     "Drop the cached thread buffer (call after replacing a buffer's deques)."},
    {NULL},
};

static PyTypeObject BindingType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cirron.core._hot.Binding",
    .tp_basicsize = sizeof(BindingObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Binding(rec, cur, tls, max_depth): a Recorder's state for the C scope path.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Binding_init,
    .tp_traverse = (traverseproc)Binding_traverse,
    .tp_clear = (inquiry)Binding_clear,
    .tp_dealloc = (destructor)Binding_dealloc,
    .tp_getset = Binding_getset,
    .tp_methods = Binding_methods,
};

/* getattr(getattr(obj, a), b) */
static PyObject *
attr_of_attr(PyObject *obj, PyObject *a, PyObject *b)
{
    PyObject *x = PyObject_GetAttr(obj, a);
    if (x == NULL) {
        return NULL;
    }
    Py_SETREF(x, PyObject_GetAttr(x, b));
    return x;
}

/* Make the cache hold the calling thread's buffer (tls.tb, or a new one); 0 or -1. */
static int
thread_buffer(BindingObject *b)
{
    uint64_t tid = PyThreadState_GetID(PyThreadState_Get());
    if (b->cached_tb != NULL && b->cached_tid == tid) {
        return 0;
    }
    PyObject *tb = PyObject_GetAttr(b->tls, s_tb);
    if (tb == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_AttributeError)) {
            return -1;
        }
        PyErr_Clear();
        tb = PyObject_CallMethodNoArgs(b->rec, s_new_buffer);
        if (tb == NULL) {
            return -1;
        }
    }
    PyObject *ids = PyObject_GetAttr(tb, s_span_ids);
    PyObject *seq = ids != NULL ? PyObject_GetAttr(tb, s_span_close_seq) : NULL;
    PyObject *spans = seq != NULL ? attr_of_attr(tb, s_spans, s_append) : NULL;
    PyObject *mseq = spans != NULL ? PyObject_GetAttr(tb, s_mark_seq) : NULL;
    PyObject *marks = mseq != NULL ? attr_of_attr(tb, s_marks, s_append) : NULL;
    if (marks == NULL) {
        Py_DECREF(tb);
        Py_XDECREF(ids);
        Py_XDECREF(seq);
        Py_XDECREF(spans);
        Py_XDECREF(mseq);
        return -1;
    }
    binding_forget(b);
    b->cached_tb = tb;
    b->cached_ids = ids;
    b->cached_seq = seq;
    b->cached_spans = spans;
    b->cached_mseq = mseq;
    b->cached_marks = marks;
    b->cached_tid = tid;
    return 0;
}

/* ---------------------------------------------------------------------------------------- */
/* ScopeCore: the fields and the `with` path of cirron.core.recorder.Scope.                  */


static int
Scope_init(ScopeObject *self, PyObject *args, PyObject *kwds)
{
    /* Scope(name, /, index=None, **attrs), as the pure-Python __init__. */
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (n < 1 || n > 2) {
        PyErr_Format(PyExc_TypeError, "Scope() takes a name and an optional index (%zd given)",
                     n);
        return -1;
    }
    PyObject *name = PyTuple_GET_ITEM(args, 0);
    PyObject *index = n == 2 ? PyTuple_GET_ITEM(args, 1) : Py_None;
    Py_INCREF(index);
    PyObject *attrs = NULL;
    if (kwds != NULL && PyDict_GET_SIZE(kwds)) {
        /* The call machinery may hand over the caller's own dict (f(**d)): copy it. */
        attrs = PyDict_Copy(kwds);
        if (attrs == NULL) {
            goto fail;
        }
        PyObject *kw_index = PyDict_GetItemWithError(attrs, s_index); /* borrowed */
        if (kw_index != NULL) {
            if (n == 2) {
                PyErr_SetString(PyExc_TypeError, "Scope() got multiple values for 'index'");
                goto fail;
            }
            Py_INCREF(kw_index);
            Py_SETREF(index, kw_index);
            if (PyDict_DelItem(attrs, s_index) < 0) {
                goto fail;
            }
        }
        else if (PyErr_Occurred()) {
            goto fail;
        }
    }
    else if ((attrs = PyDict_New()) == NULL) {
        goto fail;
    }
    Py_INCREF(name);
    Py_XSETREF(self->name, name);
    Py_XSETREF(self->index, index);
    Py_XSETREF(self->attrs, attrs);
    Py_INCREF(Py_None);
    Py_XSETREF(self->tb, Py_None);
    return 0;
fail:
    Py_DECREF(index);
    Py_XDECREF(attrs);
    return -1;
}

static int
Scope_traverse(ScopeObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->name);
    Py_VISIT(self->index);
    Py_VISIT(self->attrs);
    Py_VISIT(self->tb);
    Py_VISIT(self->parent);
    Py_VISIT(self->id);
    Py_VISIT(self->start);
    Py_VISIT(self->depth);
    Py_VISIT(self->bind);
    return 0;
}

static int
Scope_clear(ScopeObject *self)
{
    Py_CLEAR(self->name);
    Py_CLEAR(self->index);
    Py_CLEAR(self->attrs);
    Py_CLEAR(self->tb);
    Py_CLEAR(self->parent);
    Py_CLEAR(self->id);
    Py_CLEAR(self->start);
    Py_CLEAR(self->depth);
    Py_CLEAR(self->bind);
    return 0;
}

static void
Scope_dealloc(ScopeObject *self)
{
    /* Heap subclasses (every Scope class in use) release their type in subtype_dealloc. */
    PyObject_GC_UnTrack(self);
    Scope_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The last Scope class seen and its Binding (strong references: classes live for the process). */
static PyTypeObject *cached_type;
static PyObject *cached_type_bind;

/* The Binding of this scope's class (its ``_bind`` class attribute), cached on the scope. */
static BindingObject *
scope_binding(ScopeObject *self)
{
    if (self->bind != NULL) {
        return self->bind;
    }
    if (Py_TYPE(self) == cached_type) {
        Py_INCREF(cached_type_bind);
        self->bind = (BindingObject *)cached_type_bind;
        return self->bind;
    }
    PyObject *b = PyObject_GetAttr((PyObject *)Py_TYPE(self), s_bind);
    if (b == NULL) {
        return NULL;
    }
    if (!PyObject_TypeCheck(b, &BindingType)) {
        Py_DECREF(b);
        PyErr_SetString(PyExc_TypeError, "Scope class has no cirron Binding (_bind)");
        return NULL;
    }
    self->bind = (BindingObject *)b;
    Py_INCREF(Py_TYPE(self));
    Py_XSETREF(cached_type, Py_TYPE(self));
    Py_INCREF(b);
    Py_XSETREF(cached_type_bind, b);
    return self->bind;
}

static PyObject *
Scope_enter(ScopeObject *self, PyObject *Py_UNUSED(ignored))
{
    BindingObject *b = scope_binding(self);
    if (b == NULL || thread_buffer(b) < 0) {
        return NULL;
    }
    /* Strong references: the slow paths below run Python code that may reset the cache. */
    PyObject *tb = b->cached_tb, *ids = b->cached_ids, *p = NULL, *r;
    Py_INCREF(tb);
    Py_INCREF(ids);
    PyObject *result = NULL;
    if (PyContextVar_Get(b->cur, Py_None, &p) < 0) {
        goto done;
    }
    Py_ssize_t depth = 1;
    if (p != Py_None) {
        if (!is_open(p)) { /* closed under us: the nearest live ancestor */
            Py_SETREF(p, PyObject_CallMethodOneArg(b->rec, s_live_parent, p));
            if (p == NULL) {
                goto done;
            }
        }
        if (p != Py_None) {
            PyObject *pd;
            if (PyObject_TypeCheck(p, &ScopeType)) {
                pd = ((ScopeObject *)p)->depth;
                Py_XINCREF(pd);
            }
            else {
                pd = PyObject_GetAttr(p, s_depth);
            }
            depth = pd != NULL ? PyLong_AsSsize_t(pd) + 1 : 0;
            Py_XDECREF(pd);
            if (depth == 0) { /* no depth, or not an int */
                if (!PyErr_Occurred()) {
                    PyErr_SetString(PyExc_TypeError, "cirron: an open scope has no depth");
                }
                goto done;
            }
        }
    }
    if ((r = PyLong_FromSsize_t(depth)) == NULL) {
        goto done;
    }
    Py_XSETREF(self->depth, r);
    if (depth > b->max_depth) { /* counted and warned about once in Python; not recorded */
        r = PyObject_CallMethodObjArgs(b->rec, s_depth_drop, (PyObject *)self, tb, NULL);
        if (r == NULL) {
            goto done;
        }
        Py_DECREF(r);
        Py_INCREF(self);
        result = (PyObject *)self;
        goto done;
    }
    PyObject *id = PyIter_Next(ids);
    if (id == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "cirron: span id counter exhausted");
        }
        goto done;
    }
    Py_XSETREF(self->id, id);
    if ((r = PyContextVar_Set(b->cur, (PyObject *)self)) == NULL) {
        goto done;
    }
    Py_DECREF(r);
    Py_XSETREF(self->parent, p); /* the references move into the scope */
    p = NULL;
    Py_XSETREF(self->tb, tb);
    tb = NULL;
    long long t;
    if (now_ns(&t) < 0 || (r = PyLong_FromLongLong(t)) == NULL) {
        goto done;
    }
    Py_XSETREF(self->start, r);
    Py_INCREF(self);
    result = (PyObject *)self;
done:
    Py_XDECREF(tb);
    Py_XDECREF(ids);
    Py_XDECREF(p);
    return result;
}

static PyObject *
Scope_exit(ScopeObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long long end;
    if (now_ns(&end) < 0) {
        return NULL;
    }
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "__exit__ takes 3 arguments");
        return NULL;
    }
    PyObject *tb = self->tb;
    if (tb == NULL || tb == Py_None) {
        Py_RETURN_FALSE;
    }
    Py_INCREF(Py_None);
    self->tb = Py_None; /* our reference to the buffer now lives in ``tb`` */
    BindingObject *b = self->bind;
    PyObject *result = NULL, *p = NULL, *c = NULL, *seq = NULL, *n = NULL, *pid = NULL,
             *rec = NULL, *spans = NULL, *r;
    if (b == NULL && (b = scope_binding(self)) == NULL) {
        goto done;
    }
    p = self->parent != NULL ? self->parent : Py_None;
    Py_INCREF(p); /* unwind runs Python code: keep the parent alive */
    if (PyContextVar_Get(b->cur, Py_None, &c) < 0) {
        goto done;
    }
    if (c != (PyObject *)self) {
        r = PyObject_CallMethodObjArgs(b->rec, s_unwind, (PyObject *)self, c, NULL);
    }
    else {
        r = PyContextVar_Set(b->cur, p);
    }
    if (r == NULL) {
        goto done;
    }
    Py_DECREF(r);
    if (tb == b->cached_tb) { /* the thread that opened it: the cached fields */
        seq = b->cached_seq;
        spans = b->cached_spans;
        Py_INCREF(seq);
        Py_INCREF(spans);
    }
    else if ((seq = PyObject_GetAttr(tb, s_span_close_seq)) == NULL ||
             (spans = attr_of_attr(tb, s_spans, s_append)) == NULL) {
        goto done;
    }
    n = PyIter_Next(seq);
    if (n == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_RuntimeError, "cirron: close sequence exhausted");
        }
        goto done;
    }
    if (p == Py_None) {
        pid = b->root_id;
        Py_INCREF(pid);
    }
    else if (PyObject_TypeCheck(p, &ScopeType) && ((ScopeObject *)p)->id != NULL) {
        pid = ((ScopeObject *)p)->id;
        Py_INCREF(pid);
    }
    else if ((pid = PyObject_GetAttr(p, s_id)) == NULL) {
        goto done;
    }
    rec = PyTuple_New(9);
    if (rec == NULL) {
        goto done;
    }
    PyObject *id = self->id != NULL ? self->id : Py_None;
    PyObject *index = self->index != NULL ? self->index : Py_None;
    /* ``self.attrs or None``: never an empty dict in a record (_RECORDS_UNTRACKABLE). */
    PyObject *attrs = self->attrs;
    if (attrs == NULL || attrs == Py_None) {
        attrs = Py_None;
    }
    else if (PyDict_CheckExact(attrs)) {
        if (PyDict_GET_SIZE(attrs) == 0) {
            attrs = Py_None;
        }
    }
    else {
        int truth = PyObject_IsTrue(attrs);
        if (truth < 0) {
            goto done;
        }
        if (!truth) {
            attrs = Py_None;
        }
    }
    PyObject *start = self->start != NULL ? self->start : Py_None;
    PyObject *stop = PyLong_FromLongLong(end);
    if (stop == NULL) {
        goto done;
    }
    Py_INCREF(start);
    Py_INCREF(id);
    PyTuple_SET_ITEM(rec, 0, id);
    PyTuple_SET_ITEM(rec, 1, pid);
    pid = NULL;
    PyObject *name = self->name != NULL ? self->name : Py_None;
    Py_INCREF(name);
    PyTuple_SET_ITEM(rec, 2, name);
    Py_INCREF(index);
    PyTuple_SET_ITEM(rec, 3, index);
    PyTuple_SET_ITEM(rec, 4, start);
    PyTuple_SET_ITEM(rec, 5, stop);
    Py_INCREF(attrs);
    PyTuple_SET_ITEM(rec, 6, attrs);
    Py_INCREF(args[0]);
    PyTuple_SET_ITEM(rec, 7, args[0]); /* the exception type, or None */
    Py_INCREF(n);
    PyTuple_SET_ITEM(rec, 8, n);
    r = PyObject_CallOneArg(spans, rec); /* spans: the bound append */
    if (r == NULL) {
        goto done;
    }
    Py_DECREF(r);
    long long seqno = PyLong_AsLongLong(n);
    if (seqno == -1 && PyErr_Occurred()) {
        goto done;
    }
    if (!(seqno & WAKE_MASK)) { /* a burst of spans: seal before the buffer fills */
        r = PyObject_CallMethodNoArgs(b->rec, s_wake);
        if (r == NULL) {
            goto done;
        }
        Py_DECREF(r);
    }
    Py_INCREF(Py_False);
    result = Py_False;
done:
    Py_DECREF(tb);
    Py_XDECREF(p);
    Py_XDECREF(c);
    Py_XDECREF(seq);
    Py_XDECREF(n);
    Py_XDECREF(pid);
    Py_XDECREF(rec);
    Py_XDECREF(spans);
    return result;
}

static PyMethodDef Scope_methods[] = {
    {"__enter__", (PyCFunction)Scope_enter, METH_NOARGS, "Open the span (innermost scope)."},
    {"__exit__", (PyCFunction)(void (*)(void))Scope_exit, METH_FASTCALL,
     "Close the span and record it; never swallows the exception."},
    {NULL},
};

static PyMemberDef Scope_members[] = {
    {"name", T_OBJECT_EX, offsetof(ScopeObject, name), 0, "span name"},
    {"index", T_OBJECT_EX, offsetof(ScopeObject, index), 0, "epoch/batch index or None"},
    {"attrs", T_OBJECT_EX, offsetof(ScopeObject, attrs), 0, "span attributes (dict)"},
    {"tb", T_OBJECT_EX, offsetof(ScopeObject, tb), 0, "ThreadBuffer while open, else None"},
    {"parent", T_OBJECT_EX, offsetof(ScopeObject, parent), 0, "enclosing scope or None"},
    {"id", T_OBJECT_EX, offsetof(ScopeObject, id), 0, "span id (int) once entered"},
    {"start", T_OBJECT_EX, offsetof(ScopeObject, start), 0, "start, perf_counter_ns"},
    {"depth", T_OBJECT_EX, offsetof(ScopeObject, depth), 0, "nesting depth (session: 0)"},
    {NULL},
};

static PyTypeObject ScopeType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cirron.core._hot.ScopeCore",
    .tp_basicsize = sizeof(ScopeObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The C base of cirron.core.recorder.Scope (fields and the `with` path).",
    /* tp_new is object's own (set in PyInit__hot), so object.__new__(subclass) still works. */
    .tp_init = (initproc)Scope_init,
    .tp_traverse = (traverseproc)Scope_traverse,
    .tp_clear = (inquiry)Scope_clear,
    .tp_dealloc = (destructor)Scope_dealloc,
    .tp_methods = Scope_methods,
    .tp_members = Scope_members,
};

/* ---------------------------------------------------------------------------------------- */

static PyObject *
hot_perf_counter_ns(PyObject *module, PyObject *Py_UNUSED(ignored))
{
    long long t;
    if (now_ns(&t) < 0) {
        return NULL;
    }
    return PyLong_FromLongLong(t);
}

static PyMethodDef module_methods[] = {
    {"perf_counter_ns", hot_perf_counter_ns, METH_NOARGS,
     "The clock scopes are timed with (must equal time.perf_counter_ns)."},
    {NULL},
};

static struct PyModuleDef hot_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "cirron.core._hot",
    .m_doc = "C twin of the scope hot path (optional; see recorder.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

#define INTERN(var, text)                                                                    \
    if ((var = PyUnicode_InternFromString(text)) == NULL) {                                   \
        return NULL;                                                                         \
    }

PyMODINIT_FUNC
PyInit__hot(void)
{
    INTERN(s_tb, "tb");
    INTERN(s_span_ids, "span_ids");
    INTERN(s_span_close_seq, "span_close_seq");
    INTERN(s_spans, "spans");
    INTERN(s_append, "append");
    INTERN(s_bind, "_bind");
    INTERN(s_new_buffer, "new_buffer");
    INTERN(s_live_parent, "live_parent");
    INTERN(s_unwind, "unwind");
    INTERN(s_wake, "wake");
    INTERN(s_depth_drop, "depth_drop");
    INTERN(s_id, "id");
    INTERN(s_index, "index");
    INTERN(s_depth, "depth");
    INTERN(s_mark_seq, "mark_seq");
    INTERN(s_marks, "marks");
    INTERN(s_kind, "kind");
    INTERN(s_point, "point");
    INTERN(s_mark_value, "mark_value");
    INTERN(s_mark_target, "_mark_target");
    PyObject *time = PyImport_ImportModule("time");
    if (time == NULL) {
        return NULL;
    }
    perf_counter_ns_fn = PyObject_GetAttrString(time, "perf_counter_ns");
    Py_DECREF(time);
    if (perf_counter_ns_fn == NULL) {
        return NULL;
    }
    ScopeType.tp_new = PyBaseObject_Type.tp_new;
    if (PyType_Ready(&BindingType) < 0 || PyType_Ready(&ScopeType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&hot_module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&BindingType);
    Py_INCREF(&ScopeType);
    if (PyModule_AddObject(m, "Binding", (PyObject *)&BindingType) < 0 ||
        PyModule_AddObject(m, "ScopeCore", (PyObject *)&ScopeType) < 0 ||
        PyModule_AddIntConstant(m, "WAKE_MASK", WAKE_MASK) < 0 ||
        PyModule_AddStringConstant(m, "SOURCE_HASH", CIRRON_HOT_SOURCE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
