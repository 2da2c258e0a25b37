// Package notify delivers the outbox to out-of-band sinks: Standard
// Webhooks, Slack-compatible incoming webhooks, and a JSON Lines file for
// SIEM shippers. Delivery is at least once, with exponential backoff and
// jitter, and a dead letter after a configured number of attempts.
package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/bgbroker/breakglass/server/event"
)

// SinkConfig configures one sink.
type SinkConfig struct {
	Name string
	// Type is webhook (Standard Webhooks), slack, or file.
	Type string
	// URL is where webhook and slack sinks POST. HTTPS, or HTTP on a
	// loopback address only.
	URL string
	// SecretFile or SecretEnv hold the webhook's whsec_ secret.
	SecretFile string
	SecretEnv  string
	// CAFile verifies an HTTPS receiver with a private CA.
	CAFile string
	// Path is the file sink's JSON Lines file.
	Path string
	// Timeout bounds one delivery attempt (default 10s).
	Timeout time.Duration
	event.Route
}

// Sink delivers one event body.
type Sink interface {
	Name() string
	Deliver(ctx context.Context, id string, body []byte, ev *event.Event) error
}

// NewSink builds a sink from its configuration.
func NewSink(c SinkConfig) (Sink, error) {
	if c.Name == "" || strings.ContainsAny(c.Name, " \t\n") {
		return nil, fmt.Errorf("notify: every sink needs a name without spaces")
	}
	if c.Timeout <= 0 {
		c.Timeout = 10 * time.Second
	}
	switch c.Type {
	case "webhook", "slack":
		hc, err := httpClient(c)
		if err != nil {
			return nil, err
		}
		if c.Type == "slack" {
			return &slackSink{name: c.Name, url: c.URL, client: hc}, nil
		}
		key, err := ReadSecret(c.SecretFile, c.SecretEnv)
		if err != nil {
			return nil, fmt.Errorf("notify: sink %s: %w", c.Name, err)
		}
		return &webhookSink{name: c.Name, url: c.URL, client: hc, key: key}, nil
	case "file":
		if c.Path == "" {
			return nil, fmt.Errorf("notify: file sink %s needs a path", c.Name)
		}
		return &fileSink{name: c.Name, path: c.Path}, nil
	}
	return nil, fmt.Errorf("notify: sink %s has unknown type %q (webhook, slack or file)", c.Name, c.Type)
}

func httpClient(c SinkConfig) (*http.Client, error) {
	u, err := url.Parse(c.URL)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("notify: sink %s: %q is not a URL", c.Name, c.URL)
	}
	switch u.Scheme {
	case "https":
	case "http":
		host := u.Hostname()
		if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
			return nil, fmt.Errorf("notify: sink %s: plain HTTP only to a loopback address; use https for %s", c.Name, host)
		}
	default:
		return nil, fmt.Errorf("notify: sink %s: scheme %q is not http or https", c.Name, u.Scheme)
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.CAFile != "" {
		b, err := os.ReadFile(c.CAFile)
		if err != nil {
			return nil, fmt.Errorf("notify: sink %s: %w", c.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("notify: sink %s: %s holds no certificate", c.Name, c.CAFile)
		}
		tc.RootCAs = pool
	}
	return &http.Client{
		Timeout:   c.Timeout,
		Transport: &http.Transport{TLSClientConfig: tc, Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 4},
		// A redirect is a misconfigured receiver, not an acceptance.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}, nil
}

// SecretPrefix starts every Standard Webhooks secret.
const SecretPrefix = "whsec_"

// ReadSecret reads a whsec_ secret from a file (owner-only) or an
// environment variable and returns the HMAC key.
func ReadSecret(file, env string) ([]byte, error) {
	var s string
	switch {
	case file != "":
		fi, err := os.Stat(file)
		if err != nil {
			return nil, err
		}
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("secret file %s is readable by group or others (mode %04o); run: chmod 600 %s", file, fi.Mode().Perm(), file)
		}
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, err
		}
		s = strings.TrimSpace(string(b))
	case env != "":
		s = strings.TrimSpace(os.Getenv(env))
		if s == "" {
			return nil, fmt.Errorf("$%s is empty", env)
		}
	default:
		return nil, errors.New("a webhook sink needs secret_file or secret_env")
	}
	if !strings.HasPrefix(s, SecretPrefix) {
		return nil, fmt.Errorf("the webhook secret must start with %s (Standard Webhooks)", SecretPrefix)
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(s, SecretPrefix))
	if err != nil || len(key) < 24 {
		return nil, errors.New("the webhook secret must be whsec_ and base64 of at least 24 random bytes")
	}
	return key, nil
}

// NewSecret returns a fresh whsec_ secret.
func NewSecret(random io.Reader) (string, error) {
	b := make([]byte, 32)
	if _, err := io.ReadFull(random, b); err != nil {
		return "", err
	}
	return SecretPrefix + base64.StdEncoding.EncodeToString(b), nil
}

// Sign computes the Standard Webhooks signature header value for one
// attempt: v1,base64(HMAC-SHA256(key, id.timestamp.body)).
func Sign(key []byte, id string, ts time.Time, body []byte) string {
	m := hmac.New(sha256.New, key)
	fmt.Fprintf(m, "%s.%d.", id, ts.Unix())
	m.Write(body)
	return "v1," + base64.StdEncoding.EncodeToString(m.Sum(nil))
}

type webhookSink struct {
	name   string
	url    string
	client *http.Client
	key    []byte
}

func (s *webhookSink) Name() string { return s.name }

// Deliver posts the event, signed afresh for this attempt.
func (s *webhookSink) Deliver(ctx context.Context, id string, body []byte, _ *event.Event) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	now := time.Now()
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "breakglass-broker")
	req.Header.Set("webhook-id", id)
	req.Header.Set("webhook-timestamp", strconv.FormatInt(now.Unix(), 10))
	req.Header.Set("webhook-signature", Sign(s.key, id, now, body))
	return post(s.client, req)
}

func post(c *http.Client, req *http.Request) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("receiver answered %s", resp.Status)
	}
	return nil
}

type slackSink struct {
	name   string
	url    string
	client *http.Client
}

func (s *slackSink) Name() string { return s.name }

// Deliver posts a Slack incoming-webhook payload: {"text": ...}.
func (s *slackSink) Deliver(ctx context.Context, _ string, _ []byte, ev *event.Event) error {
	body, err := json.Marshal(map[string]string{"text": SlackText(ev)})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	return post(s.client, req)
}

// SlackText renders an event for people, paging its contacts by handle.
func SlackText(ev *event.Event) string {
	var b strings.Builder
	fmt.Fprintf(&b, ":rotating_light: *break-glass* `%s`: %s", ev.Type, ev.Summary)
	if ev.Drill {
		b.WriteString(" _(drill)_")
	}
	if ev.Request != "" {
		fmt.Fprintf(&b, "\nrequest `%s`", ev.Request)
	}
	var handles []string
	for _, c := range ev.Notify {
		if c.Slack != "" {
			handles = append(handles, c.Slack)
		}
	}
	if len(handles) > 0 {
		b.WriteString("\n" + strings.Join(handles, " "))
	}
	return b.String()
}

type fileSink struct {
	name string
	path string
	mu   sync.Mutex
}

func (s *fileSink) Name() string { return s.name }

// Deliver appends the event as one JSON line and syncs it to disk.
func (s *fileSink) Deliver(_ context.Context, _ string, body []byte, _ *event.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	f, err := os.OpenFile(s.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	line := append(bytes.TrimSpace(body), '\n')
	if _, err := f.Write(line); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
