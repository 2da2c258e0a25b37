package config

import (
	"runtime"
	"time"
)

// The defaults of every setting of the file, in one place. The components
// the daemon builds receive these values explicitly.
const (
	DefaultHealthInterval     = 5 * time.Second
	DefaultSweepInterval      = time.Second
	DefaultCheckpointEvery    = 64
	DefaultCheckpointInterval = 10 * time.Second
	// DefaultMetricsAddr is loopback: metrics show live activity and are
	// served without authentication.
	DefaultMetricsAddr  = "127.0.0.1:9464"
	DefaultSynchronous  = "FULL"
	DefaultMaxConns     = 16
	DefaultPINEnv       = "BREAKGLASS_HSM_PIN"
	DefaultSignTimeout  = 2 * time.Second
	DefaultIdentityMode = "uri"
	DefaultRate         = 20
	DefaultBurst        = 40
	DefaultMaxMessage   = 64 << 10
	DefaultHandshake    = 10 * time.Second
	// Connections are made again every half hour; a call in flight then
	// has five minutes (a watch stream is resumed by the SDK).
	DefaultMaxConnectionAge      = 30 * time.Minute
	DefaultMaxConnectionAgeGrace = 5 * time.Minute
	DefaultMaxAttempts           = 10
	DefaultBackoffBase           = time.Second
	DefaultBackoffMax            = 5 * time.Minute
	DefaultWorkers               = 4
	DefaultPollInterval          = 500 * time.Millisecond
	DefaultSinkTimeout           = 10 * time.Second
	DefaultRetention             = 7 * 24 * time.Hour
	DefaultSampleRatio           = 1.0
	DefaultServiceName           = "breakglassd"

	DefaultWitnessTimeout    = 10 * time.Second
	DefaultWitnessBackoffMax = time.Minute
	DefaultWitnessRefresh    = time.Hour
	DefaultCRLValidity       = time.Hour
)

// setDefaults fills every unset (zero or negative) setting.
func (c *Config) setDefaults() {
	orDuration(&c.HealthInterval, DefaultHealthInterval)
	orDuration(&c.SweepInterval, DefaultSweepInterval)
	if c.Audit.CheckpointEvery == 0 {
		c.Audit.CheckpointEvery = DefaultCheckpointEvery
	}
	orDuration(&c.Audit.CheckpointInterval, DefaultCheckpointInterval)
	if len(c.Audit.Witnesses) > 0 && c.Audit.WitnessQuorum == 0 {
		c.Audit.WitnessQuorum = len(c.Audit.Witnesses)/2 + 1 // a majority
	}
	orDuration(&c.Audit.WitnessTimeout, DefaultWitnessTimeout)
	orDuration(&c.Audit.WitnessBackoffMax, DefaultWitnessBackoffMax)
	orDuration(&c.Audit.WitnessRefresh, DefaultWitnessRefresh)
	orString(&c.Listen.Metrics, DefaultMetricsAddr)
	orString(&c.Store.Driver, DriverSQLite)
	orString(&c.Store.SQLite.Synchronous, DefaultSynchronous)
	if c.Store.MaxConns == 0 { // negative is refused by Validate
		c.Store.MaxConns = DefaultMaxConns
	}
	orString(&c.Identity.Mode, DefaultIdentityMode)
	c.HSM.setDefaults()
	c.Limits.setDefaults()
	c.Notify.setDefaults()
	if c.Tracing.SampleRatio == 0 {
		c.Tracing.SampleRatio = DefaultSampleRatio
	}
	orString(&c.Tracing.ServiceName, DefaultServiceName)
	if c.Certificates.CRLValidity == 0 { // negative is refused by Validate
		c.Certificates.CRLValidity = DefaultCRLValidity
	}
}

func (h *HSM) setDefaults() {
	if h.PINFile == "" {
		orString(&h.PINEnv, DefaultPINEnv)
	}
	// SoftHSM2 scales to about twice the cores; real HSMs have their own
	// session limits and are configured explicitly.
	orInt(&h.SigningSlots, max(2, 2*runtime.NumCPU()))
	orDuration(&h.SignTimeout, DefaultSignTimeout)
	orInt(&h.MaxQueue, 64*h.SigningSlots)
}

func (l *Limits) setDefaults() {
	if l.RatePerSecond <= 0 {
		l.RatePerSecond = DefaultRate
	}
	orInt(&l.Burst, DefaultBurst)
	orInt(&l.MaxMessageBytes, DefaultMaxMessage)
	orDuration(&l.HandshakeTimeout, DefaultHandshake)
	orDuration(&l.MaxConnectionAge, DefaultMaxConnectionAge)
	orDuration(&l.MaxConnectionAgeGrace, DefaultMaxConnectionAgeGrace)
}

func (n *Notify) setDefaults() {
	orInt(&n.MaxAttempts, DefaultMaxAttempts)
	orDuration(&n.BackoffBase, DefaultBackoffBase)
	orDuration(&n.BackoffMax, DefaultBackoffMax)
	orInt(&n.Workers, DefaultWorkers)
	orDuration(&n.PollInterval, DefaultPollInterval)
	orDuration(&n.Retention, DefaultRetention)
	for i := range n.Sinks {
		orDuration(&n.Sinks[i].Timeout, DefaultSinkTimeout)
	}
}

func orString(p *string, v string) {
	if *p == "" {
		*p = v
	}
}

func orInt(p *int, v int) {
	if *p <= 0 {
		*p = v
	}
}

func orDuration(p *time.Duration, v time.Duration) {
	if *p <= 0 {
		*p = v
	}
}
