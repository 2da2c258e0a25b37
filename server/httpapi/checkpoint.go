package httpapi

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"
)

// ErrNoCheckpoint means there is no checkpoint to serve yet: the log is
// empty, or no checkpoint carries the witness quorum.
var ErrNoCheckpoint = errors.New("no checkpoint yet")

// WitnessHealth is one witness as /healthz reports it.
type WitnessHealth struct {
	Name         string    `json:"name"`
	URL          string    `json:"url"`
	CosignedSize uint64    `json:"cosigned_size"`
	CosignedAt   time.Time `json:"cosigned_at,omitzero"`
	// AgeSeconds is how old its newest cosignature is.
	AgeSeconds int64  `json:"age_seconds,omitempty"`
	LastError  string `json:"last_error,omitempty"`
	Failures   int    `json:"failures,omitempty"`
	SplitView  string `json:"split_view,omitempty"`
}

// serveCheckpoint serves the newest checkpoint as a C2SP signed note with
// the cosignatures it carries: what monitors and relying parties compare
// with what the witnesses and the SOC hold.
func serveCheckpoint(get func(ctx context.Context) ([]byte, error), log *slog.Logger) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		b, err := get(ctx)
		switch {
		case errors.Is(err, ErrNoCheckpoint):
			http.Error(w, err.Error(), http.StatusNotFound)
			return
		case err != nil:
			log.Error("checkpoint", "err", err)
			http.Error(w, "the checkpoint cannot be read right now", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-cache")
		_, _ = w.Write(b)
	}
}
