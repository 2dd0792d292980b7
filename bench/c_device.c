/* A device's whole life in C, paced: the floor any client pays on this machine
 * for what `loadgen run` does with each device, at the same arrival rate.
 *
 *   c_device HOST PORT CAFILE RATE LIST [mqtt|tls] [own|first]
 *
 * LIST holds one device a line, "CERT KEY CLIENT_ID". Device k starts at
 * k / RATE seconds (an absolute clock, as the run's schedule), one after the
 * other, with blocking sockets, as `openssl s_time -new` does: its own
 * certificate and key read from their files into a new SSL (what `loadgen`
 * prepares), TCP, the TLS 1.3 handshake with the server's certificate and name
 * verified; with "mqtt" (the default) an MQTT 5 CONNECT, the CONNACK (read past
 * the server's session tickets), a DISCONNECT; then close. With "first", every
 * device uses the first line's certificate and key, loaded once into the
 * context as `s_time` loads its one: no preparation at all, below what any
 * fleet of distinct devices costs. (OpenSSL 3.0 reads a PEM file through its
 * decoder framework, several hundred microseconds a device: "own" is a naive
 * client's preparation, dearer than `loadgen`'s.) Prints
 * "DEVICES FAILED CPU_SECONDS", CPU (user + system) from the first start on.
 * bench.arrival builds and runs it (`--c-device`); it is not part of loadgen.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double cpu_seconds(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

/* An MQTT 5 CONNECT: clean start, keepalive 60 s, no properties. */
static int connect_packet(unsigned char *out, const char *client_id) {
    size_t id = strlen(client_id);
    size_t rest = 10 + 1 + 2 + id; /* variable header, properties length, payload */
    unsigned char *p = out;
    *p++ = 0x10;
    do { /* the remaining length, a variable byte integer */
        *p++ = (unsigned char)((rest & 0x7f) | (rest > 0x7f ? 0x80 : 0));
        rest >>= 7;
    } while (rest);
    const unsigned char head[] = {0, 4, 'M', 'Q', 'T', 'T', 5, 0x02, 0, 60, 0};
    memcpy(p, head, sizeof head);
    p += sizeof head;
    *p++ = (unsigned char)(id >> 8);
    *p++ = (unsigned char)id;
    memcpy(p, client_id, id);
    return (int)(p - out) + (int)id;
}

static int one(SSL_CTX *ctx, const struct sockaddr_in *to, const char *cert, const char *key,
               const char *client_id, int mqtt) {
    int ok = 0;
    int fd = -1;
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        goto done;
    if (cert && (SSL_use_certificate_file(ssl, cert, SSL_FILETYPE_PEM) != 1 ||
                 SSL_use_PrivateKey_file(ssl, key, SSL_FILETYPE_PEM) != 1))
        goto done;
    SSL_set_tlsext_host_name(ssl, "localhost");
    SSL_set1_host(ssl, "localhost");
    fd = socket(AF_INET, SOCK_STREAM, 0);
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    if (fd < 0 || connect(fd, (const struct sockaddr *)to, sizeof *to) != 0)
        goto done;
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1)
        goto done;
    if (mqtt) {
        unsigned char packet[300], in[64]; /* client ids are at most 255 bytes */
        int n = connect_packet(packet, client_id);
        if (SSL_write(ssl, packet, n) != n)
            goto done;
        int got = 0;
        while (got < 4) { /* CONNACK: 0x20, length, flags, reason */
            int r = SSL_read(ssl, in + got, (int)sizeof in - got);
            if (r <= 0)
                goto done;
            got += r;
        }
        if (in[0] != 0x20 || in[3] != 0)
            goto done;
        const unsigned char disconnect[] = {0xE0, 0x00};
        if (SSL_write(ssl, disconnect, 2) != 2)
            goto done;
    }
    ok = 1;
done:
    ERR_clear_error();
    if (ssl) {
        SSL_set_shutdown(ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN); /* as s_time */
        SSL_free(ssl);
    }
    if (fd >= 0)
        close(fd);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s HOST PORT CAFILE RATE LIST [mqtt|tls] [own|first]\n", argv[0]);
        return 2;
    }
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[2]))};
    inet_pton(AF_INET, argv[1], &to.sin_addr);
    double rate = atof(argv[4]);
    int mqtt = argc < 7 || strcmp(argv[6], "tls") != 0;
    FILE *list = fopen(argv[5], "r");
    if (!list || rate <= 0) {
        fprintf(stderr, "%s: cannot read the list, or the rate is not positive\n", argv[0]);
        return 2;
    }
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if (SSL_CTX_load_verify_locations(ctx, argv[3], NULL) != 1) {
        fprintf(stderr, "%s: cannot load %s\n", argv[0], argv[3]);
        return 2;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    char cert[4096], key[4096], client_id[256];
    int shared = argc > 7 && strcmp(argv[7], "first") == 0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    double cpu = cpu_seconds();
    long devices = 0, failed = 0;
    while (fscanf(list, "%4095s %4095s %255s", cert, key, client_id) == 3) {
        double due = devices / rate;
        struct timespec at = start;
        at.tv_sec += (time_t)due;
        at.tv_nsec += (long)((due - (time_t)due) * 1e9);
        if (at.tv_nsec >= 1000000000L) {
            at.tv_sec += 1;
            at.tv_nsec -= 1000000000L;
        }
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR)
            ;
        if (shared && devices == 0 &&
            (SSL_CTX_use_certificate_file(ctx, cert, SSL_FILETYPE_PEM) != 1 ||
             SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)) {
            fprintf(stderr, "%s: cannot load %s or %s\n", argv[0], cert, key);
            return 2;
        }
        failed += !one(ctx, &to, shared ? NULL : cert, key, client_id, mqtt);
        devices++;
    }
    printf("%ld %ld %.6f\n", devices, failed, cpu_seconds() - cpu);
    return 0;
}
