/*
 * tls_smtp: a fast STARTTLS SMTP sink and a matching load generator, for
 * bench/outbound_tls.sh.  Benchmarks only; loopback only; never in CI.
 *
 * Why this exists: the sink in an outbound benchmark must be clearly
 * faster than the senders measured.  smtp-sink(1) is fast but has no TLS;
 * stunnel4 (protocol = smtp) in front of it waits 200 ms on every new
 * connection to tell STARTTLS clients from implicit-TLS ones, which caps a
 * connection-per-message load at sessions/0.2 s; a Postfix smtpd sink does
 * about as much work per message as the Postfix sender being measured.
 * This is a small C server: one thread per connection, blocking OpenSSL,
 * replies pipelined (buffered until the client waits), the body thrown
 * away after the final dot.  TLS 1.3 session tickets (OpenSSL's default)
 * and a TLS 1.2 session cache make resumption possible.
 *
 *   tls_smtp sink -l 127.0.0.1:PORT -c CHAIN_AND_KEY.pem [-n NAME] [-q]
 *       EHLO advertises PIPELINING SIZE 8BITMIME ENHANCEDSTATUSCODES and,
 *       before TLS, STARTTLS.  MAIL/RCPT/RSET/NOOP 250, DATA 354 ... 250,
 *       QUIT 221.  Bytes pipelined after STARTTLS are discarded.
 *       "XSTATS" (plain or TLS) answers
 *       "250 messages=M connections=C tls=T resumed=R errors=E active=A".
 *       SIGTERM/SIGINT: prints the same counters on stdout and exits.
 *       -q (diagnostic, not for the comparison): set TCP_QUICKACK after
 *       every read, i.e. acknowledge at once instead of Linux's delayed ACK
 *       (up to 40 ms), to show what a client loses to Nagle + delayed ACK.
 *
 *   tls_smtp load -t 127.0.0.1:PORT -C CA.pem -N NAME -s SESSIONS
 *                 -m MESSAGES -r PER_CONNECTION -z SIZE [-R] [-P]
 *                 [-F SENDER] [-T RECIPIENT] [-H EHLO_NAME] [-L FILE]
 *       SESSIONS threads deliver MESSAGES messages of SIZE bytes with
 *       STARTTLS, chain and name (NAME, also SNI) verified, up to
 *       PER_CONNECTION messages per connection; -R offers the last session
 *       (resumption); -P plain SMTP, no STARTTLS (then -C/-N are not
 *       needed).  Works against any SMTP server that offers PIPELINING
 *       (MAIL, RCPT and DATA go in one flight; the body and the final dot
 *       in one write).  Latency of every message: from just before the
 *       write carrying the final "." to the moment its reply
 *       (250) was read; -L FILE writes them, in ms, one per line.
 *       Prints "load messages=.. seconds=.. rate=.. handshakes=..
 *       resumed=.. failures=.. lat_p50_ms=.. lat_p90_ms=.. lat_p99_ms=..
 *       lat_max_ms=.. lat_mean_ms=..".
 *
 * Build: cc -O2 -o tls_smtp tls_smtp.c -lssl -lcrypto -lpthread
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    SSL *ssl;
    size_t ilen, ipos, olen;
    char in[65536];
    char out[16384];
} conn_t;

static int quickack; /* sink -q: re-arm TCP_QUICKACK after every read (no delayed ACKs) */
static long st_messages, st_connections, st_tls, st_resumed, st_errors, st_active;

static void add(long *counter, long n) { __atomic_fetch_add(counter, n, __ATOMIC_RELAXED); }
static long get(long *counter) { return __atomic_load_n(counter, __ATOMIC_RELAXED); }

static int c_flush(conn_t *c)
{
    size_t off = 0;
    while (off < c->olen) {
        int n;
        if (c->ssl) {
            n = SSL_write(c->ssl, c->out + off, (int)(c->olen - off));
            if (n <= 0)
                return -1;
        } else {
            n = (int)write(c->fd, c->out + off, c->olen - off);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                return -1;
            }
        }
        off += (size_t)n;
    }
    c->olen = 0;
    return 0;
}

static int c_write(conn_t *c, const char *s, size_t len)
{
    while (len) {
        size_t room = sizeof c->out - c->olen, n = len < room ? len : room;
        memcpy(c->out + c->olen, s, n);
        c->olen += n;
        s += n;
        len -= n;
        if (c->olen == sizeof c->out && c_flush(c) < 0)
            return -1;
    }
    return 0;
}

static int c_puts(conn_t *c, const char *s) { return c_write(c, s, strlen(s)); }

/* Read more input (after moving what is left to the front). */
static int c_fill(conn_t *c)
{
    if (c->ipos > 0) {
        memmove(c->in, c->in + c->ipos, c->ilen - c->ipos);
        c->ilen -= c->ipos;
        c->ipos = 0;
    }
    if (c->ilen == sizeof c->in)
        return -1; /* a line longer than the buffer */
    int n;
    if (c->ssl) {
        n = SSL_read(c->ssl, c->in + c->ilen, (int)(sizeof c->in - c->ilen));
    } else {
        do
            n = (int)read(c->fd, c->in + c->ilen, sizeof c->in - c->ilen);
        while (n < 0 && errno == EINTR);
    }
    if (n <= 0)
        return -1;
    if (quickack) {
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
    }
    c->ilen += (size_t)n;
    return n;
}

/* Replies wait in the output buffer until the peer would have to wait for them. */
static int c_need_input(conn_t *c)
{
    if (c->olen && !(c->ssl && SSL_pending(c->ssl) > 0) && c_flush(c) < 0)
        return -1;
    return c_fill(c);
}

/* The next line without its CRLF, NUL-terminated, or NULL at EOF/error. */
static char *c_line(conn_t *c)
{
    for (;;) {
        char *start = c->in + c->ipos;
        char *nl = memchr(start, '\n', c->ilen - c->ipos);
        if (nl) {
            size_t len = (size_t)(nl - start);
            c->ipos += len + 1;
            if (len && start[len - 1] == '\r')
                len--;
            start[len] = 0;
            return start;
        }
        if (c_need_input(c) <= 0)
            return NULL;
    }
}

/* Consume message content up to and including CRLF.CRLF (the DATA line's CRLF counts). */
static int c_data(conn_t *c)
{
    static const char end[] = "\r\n.\r\n";
    int s = 2;
    for (;;) {
        while (c->ipos < c->ilen) {
            if (s == 0) {
                char *p = memchr(c->in + c->ipos, '\r', c->ilen - c->ipos);
                if (!p) {
                    c->ipos = c->ilen;
                    break;
                }
                c->ipos = (size_t)(p - c->in);
            }
            char ch = c->in[c->ipos++];
            if (ch == end[s]) {
                if (++s == 5)
                    return 0;
            } else {
                s = ch == '\r' ? 1 : 0;
            }
        }
        if (c_need_input(c) <= 0)
            return -1;
    }
}

static void close_conn(conn_t *c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl); /* send close_notify once; do not wait for the peer's */
        SSL_free(c->ssl);
    }
    close(c->fd);
    free(c);
}

static int parse_hostport(const char *s, struct sockaddr_in *sa)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (!colon || (size_t)(colon - s) >= sizeof host)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)atoi(colon + 1));
    return inet_pton(AF_INET, host, &sa->sin_addr) == 1 ? 0 : -1;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------ sink */

static SSL_CTX *sink_ctx;
static const char *sink_name = "mx.sink.bench";
static volatile sig_atomic_t stopping;

static void stats_line(char *buf, size_t size)
{
    snprintf(buf, size, "messages=%ld connections=%ld tls=%ld resumed=%ld errors=%ld active=%ld",
             get(&st_messages), get(&st_connections), get(&st_tls), get(&st_resumed), get(&st_errors),
             get(&st_active));
}

static void *serve(void *arg)
{
    conn_t *c = arg;
    char buf[512];
    int ok = 1;
    snprintf(buf, sizeof buf, "220 %s ESMTP tls_smtp sink\r\n", sink_name);
    c_puts(c, buf);
    char *line;
    while ((line = c_line(c)) != NULL) {
        char verb[12];
        size_t i;
        for (i = 0; i < sizeof verb - 1 && line[i] && line[i] != ' '; i++)
            verb[i] = (char)toupper((unsigned char)line[i]);
        verb[i] = 0;
        if (!strcmp(verb, "EHLO")) {
            snprintf(buf, sizeof buf,
                     "250-%s\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n250-8BITMIME\r\n%s"
                     "250 ENHANCEDSTATUSCODES\r\n",
                     sink_name, c->ssl ? "" : "250-STARTTLS\r\n");
            c_puts(c, buf);
        } else if (!strcmp(verb, "HELO")) {
            snprintf(buf, sizeof buf, "250 %s\r\n", sink_name);
            c_puts(c, buf);
        } else if (!strcmp(verb, "STARTTLS")) {
            if (c->ssl) {
                c_puts(c, "503 5.5.1 Error: TLS already active\r\n");
                continue;
            }
            c_puts(c, "220 2.0.0 Ready to start TLS\r\n");
            if (c_flush(c) < 0) {
                ok = 0;
                break;
            }
            c->ipos = c->ilen = 0; /* plain-text bytes pipelined after STARTTLS: discarded */
            c->ssl = SSL_new(sink_ctx);
            SSL_set_fd(c->ssl, c->fd);
            if (SSL_accept(c->ssl) != 1) {
                ok = 0;
                break;
            }
            add(&st_tls, 1);
            if (SSL_session_reused(c->ssl))
                add(&st_resumed, 1);
        } else if (!strcmp(verb, "MAIL")) {
            c_puts(c, "250 2.1.0 Ok\r\n");
        } else if (!strcmp(verb, "RCPT")) {
            c_puts(c, "250 2.1.5 Ok\r\n");
        } else if (!strcmp(verb, "DATA")) {
            c_puts(c, "354 End data with <CR><LF>.<CR><LF>\r\n");
            if (c_data(c) < 0) {
                ok = 0;
                break;
            }
            long n = __atomic_add_fetch(&st_messages, 1, __ATOMIC_RELAXED);
            snprintf(buf, sizeof buf, "250 2.0.0 Ok: queued as S%ld\r\n", n);
            c_puts(c, buf);
        } else if (!strcmp(verb, "RSET") || !strcmp(verb, "NOOP")) {
            c_puts(c, "250 2.0.0 Ok\r\n");
        } else if (!strcmp(verb, "QUIT")) {
            c_puts(c, "221 2.0.0 Bye\r\n");
            c_flush(c);
            break;
        } else if (!strcmp(verb, "XSTATS")) {
            char stats[400];
            stats_line(stats, sizeof stats);
            snprintf(buf, sizeof buf, "250 %s\r\n", stats);
            c_puts(c, buf);
        } else {
            c_puts(c, "502 5.5.2 Error: command not recognized\r\n");
        }
    }
    if (!line && c->ilen != c->ipos)
        ok = 0;
    if (!ok)
        add(&st_errors, 1);
    close_conn(c);
    add(&st_active, -1);
    return NULL;
}

static void on_stop(int sig)
{
    (void)sig;
    stopping = 1;
}

static int run_sink(int argc, char **argv)
{
    const char *listen_at = NULL, *pem = NULL;
    int opt;
    while ((opt = getopt(argc, argv, "l:c:n:q")) != -1) {
        switch (opt) {
        case 'q': quickack = 1; break;
        case 'l': listen_at = optarg; break;
        case 'c': pem = optarg; break;
        case 'n': sink_name = optarg; break;
        default: return 2;
        }
    }
    struct sockaddr_in sa;
    if (!listen_at || !pem || parse_hostport(listen_at, &sa) < 0) {
        fprintf(stderr, "usage: tls_smtp sink -l 127.0.0.1:PORT -c CHAIN_AND_KEY.pem [-n NAME] [-q]\n");
        return 2;
    }
    sink_ctx = SSL_CTX_new(TLS_server_method());
    if (SSL_CTX_use_certificate_chain_file(sink_ctx, pem) != 1 ||
        SSL_CTX_use_PrivateKey_file(sink_ctx, pem, SSL_FILETYPE_PEM) != 1) {
        ERR_print_errors_fp(stderr);
        return 1;
    }
    SSL_CTX_set_min_proto_version(sink_ctx, TLS1_2_VERSION);
    SSL_CTX_set_session_id_context(sink_ctx, (const unsigned char *)"tls_smtp", 8);
    SSL_CTX_sess_set_cache_size(sink_ctx, 100000);
    SSL_CTX_set_options(sink_ctx, SSL_OP_NO_RENEGOTIATION);

    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 1024) < 0) {
        perror("tls_smtp sink: bind/listen");
        return 1;
    }
    struct sigaction sig = {0};
    sig.sa_handler = on_stop; /* no SA_RESTART: accept() returns EINTR */
    sigaction(SIGTERM, &sig, NULL);
    sigaction(SIGINT, &sig, NULL);
    signal(SIGPIPE, SIG_IGN);
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    printf("tls_smtp sink listening on %s\n", listen_at);
    fflush(stdout);
    while (!stopping) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            perror("tls_smtp sink: accept");
            sleep(1);
            continue;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        conn_t *c = calloc(1, sizeof *c);
        c->fd = fd;
        add(&st_connections, 1);
        add(&st_active, 1);
        pthread_t tid;
        if (pthread_create(&tid, &attr, serve, c) != 0) {
            add(&st_active, -1);
            add(&st_errors, 1);
            close(fd);
            free(c);
        }
    }
    char stats[400];
    stats_line(stats, sizeof stats);
    printf("tls_smtp sink stopped: %s\n", stats);
    fflush(stdout);
    return 0;
}

/* ------------------------------------------------------------------ load */

static SSL_CTX *load_ctx;
static struct sockaddr_in load_addr;
static const char *load_name = "mx.sink.bench";
static long load_remaining, load_per_conn = 1, load_failures, load_handshakes, load_resumed, load_done;
static int load_resume, load_plain;
static const char *load_from = "load@load.bench", *load_to = "user@sink.bench", *load_helo = "load.bench";
static char load_envelope[1024], load_ehlo[300];
static double *load_latency; /* seconds, one per delivered message (index: load_done before the increment) */
static long load_latency_cap;
static char *load_body;
static size_t load_body_len;
static SSL_SESSION *load_session;
static pthread_mutex_t load_lock = PTHREAD_MUTEX_INITIALIZER;

/* Read one (multi-line) reply; its code, or -1. */
static int read_reply(conn_t *c)
{
    for (;;) {
        char *line = c_line(c);
        if (!line || strlen(line) < 3)
            return -1;
        if (line[3] != '-')
            return atoi(line);
    }
}

static int send_cmd(conn_t *c, const char *cmd, int want)
{
    if (c_puts(c, cmd) < 0 || c_flush(c) < 0)
        return -1;
    return read_reply(c) == want ? 0 : -1;
}

static long take(long n)
{
    long left = __atomic_load_n(&load_remaining, __ATOMIC_RELAXED);
    for (;;) {
        if (left <= 0)
            return 0;
        long mine = left < n ? left : n;
        if (__atomic_compare_exchange_n(&load_remaining, &left, left - mine, 0, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return mine;
    }
}

static int one_connection(long n)
{
    conn_t *c = calloc(1, sizeof *c);
    int one = 1, rc = -1;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(c->fd, (struct sockaddr *)&load_addr, sizeof load_addr) < 0)
        goto out;
    if (read_reply(c) != 220 || send_cmd(c, load_ehlo, 250) < 0)
        goto out;
    if (!load_plain) {
        if (send_cmd(c, "STARTTLS\r\n", 220) < 0)
            goto out;
        c->ipos = c->ilen = 0;
        c->ssl = SSL_new(load_ctx);
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_tlsext_host_name(c->ssl, load_name);
        SSL_set1_host(c->ssl, load_name);
        if (load_resume) {
            pthread_mutex_lock(&load_lock);
            if (load_session)
                SSL_set_session(c->ssl, load_session);
            pthread_mutex_unlock(&load_lock);
        }
        if (SSL_connect(c->ssl) != 1 || SSL_get_verify_result(c->ssl) != X509_V_OK) {
            ERR_print_errors_fp(stderr);
            goto out;
        }
        add(&load_handshakes, 1);
        if (SSL_session_reused(c->ssl))
            add(&load_resumed, 1);
        if (send_cmd(c, load_ehlo, 250) < 0)
            goto out;
    }
    for (long i = 0; i < n; i++) {
        c_puts(c, load_envelope);
        if (c_flush(c) < 0 || read_reply(c) != 250 || read_reply(c) != 250 || read_reply(c) != 354)
            goto out;
        if (c_write(c, load_body, load_body_len) < 0 || c_puts(c, ".\r\n") < 0)
            goto out;
        /* the clock starts before the write that carries the final dot (a
           thread preempted inside write() would otherwise start it late) */
        double t_dot = now();
        if (c_flush(c) < 0 || read_reply(c) != 250)
            goto out;
        double t_reply = now();
        long k = __atomic_fetch_add(&load_done, 1, __ATOMIC_RELAXED);
        if (k < load_latency_cap)
            load_latency[k] = t_reply - t_dot;
    }
    if (send_cmd(c, "QUIT\r\n", 221) < 0)
        goto out;
    if (load_resume && c->ssl) {
        SSL_SESSION *s = SSL_get1_session(c->ssl);
        if (s && SSL_SESSION_is_resumable(s)) {
            pthread_mutex_lock(&load_lock);
            SSL_SESSION *old = load_session;
            load_session = s;
            pthread_mutex_unlock(&load_lock);
            if (old)
                SSL_SESSION_free(old);
        } else if (s) {
            SSL_SESSION_free(s);
        }
    }
    rc = 0;
out:
    close_conn(c);
    return rc;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* nearest-rank percentile of a sorted array, in ms */
static double percentile_ms(const double *v, long n, double p)
{
    if (n <= 0)
        return 0;
    long k = (long)(p * (double)n + 0.999999999) - 1;
    if (k < 0)
        k = 0;
    if (k >= n)
        k = n - 1;
    return v[k] * 1000;
}

static void *load_worker(void *arg)
{
    (void)arg;
    long n;
    while ((n = take(load_per_conn)) > 0) {
        if (one_connection(n) < 0) {
            add(&load_failures, 1);
            if (get(&load_failures) > 100)
                break;
        }
    }
    return NULL;
}

static int run_load(int argc, char **argv)
{
    const char *target = NULL, *ca = NULL;
    long sessions = 20, messages = 2000, size = 4096;
    int opt;
    const char *latency_file = NULL;
    while ((opt = getopt(argc, argv, "t:C:N:s:m:r:z:RPF:T:H:L:")) != -1) {
        switch (opt) {
        case 't': target = optarg; break;
        case 'C': ca = optarg; break;
        case 'N': load_name = optarg; break;
        case 's': sessions = atol(optarg); break;
        case 'm': messages = atol(optarg); break;
        case 'r': load_per_conn = atol(optarg); break;
        case 'z': size = atol(optarg); break;
        case 'R': load_resume = 1; break;
        case 'P': load_plain = 1; break;
        case 'F': load_from = optarg; break;
        case 'T': load_to = optarg; break;
        case 'H': load_helo = optarg; break;
        case 'L': latency_file = optarg; break;
        default: return 2;
        }
    }
    if (!target || (!ca && !load_plain) || parse_hostport(target, &load_addr) < 0 || sessions < 1 ||
        load_per_conn < 1 || size < 300 || messages < 1) {
        fprintf(stderr, "usage: tls_smtp load -t 127.0.0.1:PORT -C CA.pem -N NAME -s SESSIONS -m MESSAGES "
                        "-r PER_CONNECTION -z SIZE [-R] [-P] [-F SENDER] [-T RCPT] [-H EHLO_NAME] [-L FILE]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    if (!load_plain) {
        load_ctx = SSL_CTX_new(TLS_client_method());
        SSL_CTX_set_min_proto_version(load_ctx, TLS1_2_VERSION);
        if (SSL_CTX_load_verify_locations(load_ctx, ca, NULL) != 1) {
            ERR_print_errors_fp(stderr);
            return 1;
        }
        SSL_CTX_set_verify(load_ctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_session_cache_mode(load_ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    }
    snprintf(load_envelope, sizeof load_envelope, "MAIL FROM:<%s> SIZE=%ld\r\nRCPT TO:<%s>\r\nDATA\r\n", load_from,
             size, load_to);
    snprintf(load_ehlo, sizeof load_ehlo, "EHLO %s\r\n", load_helo);
    load_latency_cap = messages;
    load_latency = calloc((size_t)messages, sizeof *load_latency);

    /* SIZE bytes: a few headers, then 76-character lines, CRLF throughout */
    load_body = malloc((size_t)size + 512);
    int off = snprintf(load_body, 256, "From: <%.80s>\r\nTo: <%.80s>\r\nSubject: tls_smtp load\r\n\r\n", load_from,
                       load_to);
    while (off < size) {
        for (int i = 0; i < 76; i++, off++)
            load_body[off] = (char)('a' + (off + i) % 26);
        load_body[off++] = '\r';
        load_body[off++] = '\n';
    }
    load_body_len = (size_t)size;
    load_body[size - 2] = '\r';
    load_body[size - 1] = '\n';

    load_remaining = messages;
    pthread_t *tids = calloc((size_t)sessions, sizeof *tids);
    double t0 = now();
    for (long i = 0; i < sessions; i++)
        pthread_create(&tids[i], NULL, load_worker, NULL);
    for (long i = 0; i < sessions; i++)
        pthread_join(tids[i], NULL);
    double dt = now() - t0;
    long done = get(&load_done), nlat = done < load_latency_cap ? done : load_latency_cap;
    double sum = 0;
    if (latency_file) {
        FILE *f = fopen(latency_file, "w");
        if (!f) {
            perror(latency_file);
            return 1;
        }
        for (long i = 0; i < nlat; i++)
            fprintf(f, "%.3f\n", load_latency[i] * 1000);
        fclose(f);
    }
    for (long i = 0; i < nlat; i++)
        sum += load_latency[i];
    qsort(load_latency, (size_t)nlat, sizeof *load_latency, cmp_double);
    printf("load messages=%ld seconds=%.3f rate=%.1f handshakes=%ld resumed=%ld failures=%ld"
           " lat_p50_ms=%.2f lat_p90_ms=%.2f lat_p99_ms=%.2f lat_max_ms=%.2f lat_mean_ms=%.2f\n",
           done, dt, done / dt, get(&load_handshakes), get(&load_resumed), get(&load_failures),
           percentile_ms(load_latency, nlat, 0.50), percentile_ms(load_latency, nlat, 0.90),
           percentile_ms(load_latency, nlat, 0.99), nlat ? load_latency[nlat - 1] * 1000 : 0,
           nlat ? sum / (double)nlat * 1000 : 0);
    return done == messages ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "sink"))
        return run_sink(argc - 1, argv + 1);
    if (argc >= 2 && !strcmp(argv[1], "load"))
        return run_load(argc - 1, argv + 1);
    fprintf(stderr, "usage: tls_smtp sink ... | tls_smtp load ...\n");
    return 2;
}
