package grpcapi

import (
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/credentials"
)

// How long, and how much, a connection refused in the TLS handshake is
// read before it is closed.
const (
	alertDrainFor   = time.Second
	alertDrainBytes = 64 << 10
)

// deliverAlerts wraps the listener's TLS credentials so that a client
// refused in the handshake reads the alert that says why ("certificate
// required", "unknown certificate authority", "bad certificate").
//
// In TLS 1.3 the client's side of the handshake ends before the broker has
// judged its certificate, so the client is already sending its HTTP/2
// preface when the alert goes out. Closing the socket with those bytes
// unread makes the kernel answer with a reset, which discards the alert
// in the client's receive buffer: the client saw only "broken pipe" or
// "connection reset", about four times in ten. Half-closing after the
// alert and reading what the client sent until it hangs up (at most a
// second and 64 KiB, nothing of it used) lets the alert arrive, so the SDK
// and bgctl can say which certificate to set.
func deliverAlerts(c credentials.TransportCredentials) credentials.TransportCredentials {
	return alertingCreds{c}
}

type alertingCreds struct {
	credentials.TransportCredentials
}

// ServerHandshake runs the TLS handshake on a connection whose Close,
// while the handshake is under way, drains it first: grpc's TLS
// credentials close the connection themselves when the handshake fails.
func (c alertingCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	d := &drainOnClose{Conn: raw}
	d.armed.Store(true)
	conn, info, err := c.TransportCredentials.ServerHandshake(d)
	if err != nil {
		_ = d.Close()
		return nil, nil, err
	}
	d.armed.Store(false)
	return conn, info, nil
}

func (c alertingCreds) Clone() credentials.TransportCredentials {
	return alertingCreds{c.TransportCredentials.Clone()}
}

type drainOnClose struct {
	net.Conn
	armed atomic.Bool
	once  sync.Once
}

func (d *drainOnClose) Close() error {
	if d.armed.Load() {
		d.once.Do(func() {
			if cw, ok := d.Conn.(interface{ CloseWrite() error }); ok {
				_ = cw.CloseWrite()
			}
			if d.SetReadDeadline(time.Now().Add(alertDrainFor)) == nil {
				_, _ = io.CopyN(io.Discard, d.Conn, alertDrainBytes)
			}
		})
	}
	return d.Conn.Close()
}
