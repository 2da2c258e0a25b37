package devmode

import (
	"crypto"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/bgbroker/breakglass/format/policy"
	"github.com/bgbroker/breakglass/format/statement"
)

// PolicySigner signs, for dev mode only, the change of the policy from
// previous to hash with the key of every demo identity in dir, as their
// owners would with bgctl policy sign: dev mode keeps the policy admins'
// keys beside the broker, so that editing the demo policy and starting
// again just works. The broker counts the statements of the policy admins
// among them and ignores the others. Production has no such signer: its
// admins sign in their own hands.
func PolicySigner(dir string) func(origin, previous, hash string, at time.Time) ([]statement.Signed, error) {
	return func(origin, previous, hash string, at time.Time) ([]statement.Signed, error) {
		var out []statement.Signed
		for _, p := range Principals {
			crt, key := filepath.Join(dir, "identities", p.Name+".crt"), filepath.Join(dir, "identities", p.Name+".key")
			if _, err := os.Stat(key); err != nil {
				continue
			}
			pair, err := tls.LoadX509KeyPair(crt, key)
			if err != nil {
				return nil, fmt.Errorf("dev mode: %s's certificate: %w", p.Name, err)
			}
			signer, ok := pair.PrivateKey.(crypto.Signer)
			if !ok || pair.Leaf == nil {
				return nil, fmt.Errorf("dev mode: %s's key cannot sign", p.Name)
			}
			st := statement.PolicyStatement{Decision: statement.DecisionApprove, Origin: origin, Previous: statement.PreviousLine(previous), Policy: hash,
				Comment: statement.CommentDigest("signed by breakglassd dev with the demo admins' keys"), Time: at.UTC().Truncate(time.Second)}
			sig, err := statement.Sign(signer, st.Marshal())
			if err != nil {
				return nil, err
			}
			out = append(out, statement.Signed{Statement: st.Marshal(), Signature: sig, Certificate: pair.Leaf.Raw})
		}
		return out, nil
	}
}

// writeGenesisSignatures writes policy.sigs with the demo identities'
// statements approving the demo policy as the first policy of the log.
func writeGenesisSignatures(dir, origin string) error {
	return SignGenesis(dir, origin, demoPolicy)
}

// SignGenesis writes policy.sigs in a dev directory with the demo
// identities' statements approving text as the first policy of the log
// named origin, for tools that replace the demo policy before the broker
// first starts (the benchmarks).
func SignGenesis(dir, origin, text string) error {
	p, err := policy.Load([]byte(text), "policy.yaml")
	if err != nil {
		return err
	}
	// The broker runs it naming the configuration's identity rule, which
	// is part of the hash the admins sign.
	p = p.WithIdentity(policy.Identity{Mode: policy.IdentityURI, URIPrefix: URIPrefix})
	sigs, err := PolicySigner(dir)(origin, "", p.Hash(), time.Now())
	if err != nil {
		return err
	}
	var b []byte
	b = append(b, "# The demo admins' signatures of the first policy (bgctl policy sign --genesis writes such lines).\n"...)
	for _, s := range sigs {
		b = append(b, statement.MarshalBundleLine(s)...)
	}
	return os.WriteFile(filepath.Join(dir, "policy.sigs"), b, 0o600)
}
