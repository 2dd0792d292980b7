/* Prototype: a device connection's readable callback and writes in C, over the
 * SSL * inside Python's SSLObject (its memory BIOs), fed from the socket. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <time.h>

enum { AGAIN = 0, WANT = 1, EOF_ = -1, HS_ERROR = -2, READ_ERROR = -3, CLOSED = -4 };

static unsigned char inbuf[65536];
static unsigned char outbuf[65536];
static unsigned char plain[65536];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* What the write BIO holds, sent: NULL when all went (or *err set), else the
 * bytes the socket did not take (new reference). */
static PyObject *flush(SSL *ssl, int fd, int *err) {
    BIO *w = SSL_get_wbio(ssl);
    *err = 0;
    for (;;) {
        int n = BIO_read(w, outbuf, sizeof outbuf);
        if (n <= 0)
            return NULL;
        ssize_t sent = send(fd, outbuf, (size_t)n, MSG_NOSIGNAL);
        if (sent < 0) {
            if (errno == EAGAIN || errno == EINTR)
                sent = 0;
            else {
                *err = errno;
                return NULL;
            }
        }
        if (sent < n) {
            /* The rest of this chunk and whatever the BIO still holds. */
            size_t more = BIO_ctrl_pending(w);
            PyObject *rest = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(n - sent + more));
            if (rest == NULL)
                return NULL;
            memcpy(PyBytes_AS_STRING(rest), outbuf + sent, (size_t)(n - sent));
            if (more)
                BIO_read(w, PyBytes_AS_STRING(rest) + (n - sent), (int)more);
            return rest;
        }
    }
}

static PyObject *pending_result(PyObject *rest, int err, PyObject *ok) {
    if (err) {
        Py_DECREF(ok);
        return PyLong_FromLong(-1000 - err);
    }
    if (rest != NULL) {
        PyObject *t = PyTuple_Pack(2, ok, rest);
        Py_DECREF(ok);
        Py_DECREF(rest);
        return t;
    }
    return ok;
}

/* readable(ssl, fd, connect, release) ->
 *   int: AGAIN, WANT, EOF_, HS_ERROR, READ_ERROR, CLOSED, -1000-errno (recv/send)
 *   (t_tls, t_sent): the handshake finished, the CONNECT went out
 *   bytes: plaintext read
 *   (result, leftover bytes): as result, some output the socket did not take */
static PyObject *readable(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "readable(ssl, fd, connect, release)");
        return NULL;
    }
    SSL *ssl = (SSL *)PyLong_AsVoidPtr(args[0]);
    int fd = (int)PyLong_AsLong(args[1]);
    int release = PyObject_IsTrue(args[3]);
    ssize_t n = recv(fd, inbuf, sizeof inbuf, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR)
            return PyLong_FromLong(AGAIN);
        return PyLong_FromLong(-1000 - errno);
    }
    if (n == 0)
        return PyLong_FromLong(EOF_);
    BIO_write(SSL_get_rbio(ssl), inbuf, (int)n);
    int err;
    PyObject *rest;
    if (!SSL_is_init_finished(ssl)) {
        int r = SSL_do_handshake(ssl);
        if (r != 1) {
            if (SSL_get_error(ssl, r) != SSL_ERROR_WANT_READ)
                return PyLong_FromLong(HS_ERROR); /* the error queue left for Python */
            rest = flush(ssl, fd, &err);
            return pending_result(rest, err, PyLong_FromLong(WANT));
        }
        double t_tls = now();
        SSL_certs_clear(ssl);
        Py_buffer connect;
        if (PyObject_GetBuffer(args[2], &connect, PyBUF_SIMPLE) < 0)
            return NULL;
        size_t written;
        r = SSL_write_ex(ssl, connect.buf, (size_t)connect.len, &written);
        PyBuffer_Release(&connect);
        if (r != 1)
            return PyLong_FromLong(READ_ERROR);
        rest = flush(ssl, fd, &err);
        double t_sent = now();
        PyObject *ok = Py_BuildValue("(dd)", t_tls, t_sent);
        if (ok == NULL)
            return NULL;
        /* Records that came with the server's last flight stay in the read BIO:
         * the caller reads them. */
        return pending_result(rest, err, ok);
    }
    size_t got = 0;
    int code = WANT;
    for (;;) {
        size_t r;
        if (SSL_read_ex(ssl, plain + got, sizeof plain - got, &r) == 1) {
            got += r;
            if (BIO_ctrl_pending(SSL_get_rbio(ssl)) == 0 && SSL_pending(ssl) == 0)
                break;
            if (got == sizeof plain)
                break;
            continue;
        }
        int e = SSL_get_error(ssl, 0);
        if (e == SSL_ERROR_WANT_READ)
            break;
        code = e == SSL_ERROR_ZERO_RETURN ? CLOSED : READ_ERROR;
        break;
    }
    if (code != WANT) {
        if (got == 0)
            return PyLong_FromLong(code);
        PyObject *data = PyBytes_FromStringAndSize((const char *)plain, (Py_ssize_t)got);
        if (data == NULL)
            return NULL;
        PyObject *t = Py_BuildValue("(Ni)", data, code);
        return t;
    }
    rest = flush(ssl, fd, &err);
    if (release && rest == NULL && !err)
        SSL_free_buffers(ssl);
    PyObject *ok = got ? PyBytes_FromStringAndSize((const char *)plain, (Py_ssize_t)got)
                       : PyLong_FromLong(WANT);
    if (ok == NULL)
        return NULL;
    return pending_result(rest, err, ok);
}

/* write(ssl, fd, data) -> None (all sent), bytes (what the socket did not take),
 * or int -1000-errno. */
static PyObject *write_(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "write(ssl, fd, data)");
        return NULL;
    }
    SSL *ssl = (SSL *)PyLong_AsVoidPtr(args[0]);
    int fd = (int)PyLong_AsLong(args[1]);
    Py_buffer data;
    if (PyObject_GetBuffer(args[2], &data, PyBUF_SIMPLE) < 0)
        return NULL;
    size_t written;
    int r = SSL_write_ex(ssl, data.buf, (size_t)data.len, &written);
    PyBuffer_Release(&data);
    if (r != 1) {
        PyErr_SetString(PyExc_OSError, "SSL_write failed");
        return NULL;
    }
    int err;
    PyObject *rest = flush(ssl, fd, &err);
    if (err)
        return PyLong_FromLong(-1000 - err);
    if (rest == NULL)
        Py_RETURN_NONE;
    return rest;
}

static PyMethodDef methods[] = {
    {"readable", (PyCFunction)(void (*)(void))readable, METH_FASTCALL, NULL},
    {"write", (PyCFunction)(void (*)(void))write_, METH_FASTCALL, NULL},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastconn", NULL, -1, methods};

PyMODINIT_FUNC PyInit__fastconn(void) { return PyModule_Create(&module); }
