/* Channels in the guest init: TCP ports bridged over virtio-serial ports (see
 * src/uniklab/channels.py for the design and the frame format, kept in step with this).
 *
 * The "channels" member of the guest config lists them; chan_start forks one helper
 * process that runs them all, so PID 1 only parses the config and starts it. */
#ifndef UNIKLAB_CHAN_H
#define UNIKLAB_CHAN_H

#include "json.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CHAN_MAX 16
#define CHAN_NAME_MAX 31
#define CHAN_HDR 8
#define CHAN_PAYLOAD_MAX 16384

enum chan_kind { CHAN_OPEN = 1, CHAN_DATA = 2, CHAN_EOF = 3, CHAN_CLOSE = 4 };

struct chan_spec {
    char name[CHAN_NAME_MAX + 1]; /* the virtio-serial port's name */
    int port;                     /* 127.0.0.1:port in the guest */
    int out;                      /* 0: "in" (the host opens), 1: "out" (a link: we listen) */
};

/* The config's "channels" array (NULL: none) into specs; -1 with a message in err. */
int chan_config(const struct jv *arr, struct chan_spec *specs, int *n, char *err, size_t errlen);

/* Fork the helper that serves the channels; its pid, or -1 (logged).  0 if n is 0. */
pid_t chan_start(const struct chan_spec *specs, int n);

/* The frame reader: bytes from the transport in arbitrary pieces. */
struct chan_reader {
    unsigned char hdr[CHAN_HDR];
    size_t hlen;
    size_t got; /* payload bytes of the current frame so far */
    uint8_t kind;
    uint16_t len;
    uint32_t conn;
    char payload[CHAN_PAYLOAD_MAX];
};

/* Consume bytes from data[0..n): returns 1 with a complete frame in the reader (kind, conn,
 * len, payload) and *used set to the bytes taken, 0 when all n bytes were taken and no
 * frame is complete yet, -1 on a bad header (the stream cannot be resynchronised). */
int chan_feed(struct chan_reader *r, const char *data, size_t n, size_t *used);

/* Write a frame header for (kind, conn, len) into out[CHAN_HDR]. */
void chan_header(unsigned char *out, int kind, uint32_t conn, uint16_t len);

#endif
