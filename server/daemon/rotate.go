package daemon

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/bgbroker/breakglass/hsm"
	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/store"
)

// Rotate runs a key rotation ceremony against the broker's HSM and store:
// a new key for purpose (and account, for token keys) becomes active and
// the old one retired, audited in the log (and announced through the
// outbox, which the running broker delivers). A running broker picks the
// new key up within seconds.
func Rotate(ctx context.Context, cfg *config.Config, p hsm.Purpose, account, label string, log *slog.Logger) (store.KeyRecord, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	pol, _, err := cfg.LoadPolicy()
	if err != nil {
		return store.KeyRecord{}, err
	}
	if account != "" {
		a, ok := pol.Account(account)
		if !ok {
			return store.KeyRecord{}, fmt.Errorf("account %q is not in the policy", account)
		}
		if a.TokenKey == "" {
			return store.KeyRecord{}, fmt.Errorf("account %s has no token_key of its own; set one in the policy first", account)
		}
	}
	o, err := openOffline(ctx, cfg, log)
	if err != nil {
		return store.KeyRecord{}, err
	}
	defer o.Close()
	return o.ring.Rotate(ctx, o.broker, p, account, label, "key ceremony")
}
