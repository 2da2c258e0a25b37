package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/bgbroker/breakglass/server/identity"
)

// eventInterval is how often the stream says "look again" with no write:
// deadlines move requests on by themselves.
const eventInterval = 30 * time.Second

// events is a server-sent event stream: a "change" event after every
// committed change to a request (the notifications WatchRequest uses,
// other replicas' included), on which the page fetches its list again.
// The stream carries no request data, so it shows nobody anything they
// could not read; it ends when the client certificate is revoked or
// expires, as gRPC streams do.
func (c *Console) events(w http.ResponseWriter, r *http.Request, v *viewer) {
	rc := http.NewResponseController(w)
	ctx, stop := c.cfg.Identity.Guard(r.Context(), v.peer)
	defer stop()
	started := false
	send := func(first bool) error {
		event := "change"
		if first {
			w.Header().Set("Content-Type", "text/event-stream")
			w.Header().Set("X-Accel-Buffering", "no")
			started, event = true, "ready"
		}
		if _, err := fmt.Fprintf(w, "event: %s\ndata: {}\n\n", event); err != nil {
			return err
		}
		return rc.Flush()
	}
	err := c.cfg.Broker.WatchChanges(ctx, v.Principal, eventInterval, send)
	if !started {
		if err != nil && ctx.Err() == nil {
			c.brokerError(w, r, v, err)
		}
		return
	}
	if cause := context.Cause(ctx); errors.Is(cause, identity.ErrNotValid) {
		c.log.Warn("console: event stream ended: the client certificate is no longer valid", "principal", v.Principal, "err", cause)
		_, _ = fmt.Fprintf(w, "event: unauthenticated\ndata: {}\n\n")
		_ = rc.Flush()
		return
	}
	if err != nil && ctx.Err() == nil {
		c.log.Debug("console: event stream ended", "principal", v.Principal, "err", err)
	}
}
