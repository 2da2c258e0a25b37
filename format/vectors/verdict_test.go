package vectors

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/rfc6962"
	"golang.org/x/mod/sumdb/note"

	"github.com/bgbroker/breakglass/format/audit"
	"github.com/bgbroker/breakglass/format/checkpoint"
	"github.com/bgbroker/breakglass/format/principal"
	"github.com/bgbroker/breakglass/format/statement"
)

func read[V any](t *testing.T, name string) []V {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	var f file[V]
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&f); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if len(f.Vectors) == 0 {
		t.Fatalf("%s has no vectors", name)
	}
	return f.Vectors
}

func unb64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func verdict(reason string) string {
	if reason == "" {
		return "accept"
	}
	return "reject"
}

func judge(t *testing.T, name, wantVerdict, wantReason, reason string, err error) {
	t.Helper()
	if verdict(reason) != wantVerdict || reason != wantReason {
		t.Errorf("%s: the Go verifier says %s (%q: %v); the vector says %s (%q)", name, verdict(reason), reason, err, wantVerdict, wantReason)
	}
}

// TestRequestContentVectors rebuilds each content text from its inputs,
// as a client does from the Request message.
func TestRequestContentVectors(t *testing.T) {
	for _, v := range read[contentVector](t, "request-content.json") {
		c := v.Inputs.content()
		if string(c.Bytes()) != v.Text || c.Digest() != v.Digest || "sha256:"+hexSHA([]byte(v.Text)) != v.Digest {
			t.Errorf("%s: the code builds %q (%s)", v.Name, c.Bytes(), c.Digest())
		}
		for _, w := range v.Wrong {
			if w.Text == v.Text || w.Digest == v.Digest || w.Digest != "sha256:"+hexSHA([]byte(w.Text)) {
				t.Errorf("%s: mistake %q is not a distinct wrong text", v.Name, w.Why)
			}
		}
	}
	for _, v := range read[accountVector](t, "account-attestation.json") {
		if string(statement.AccountText(v.Inputs.Account, v.Inputs.PolicyHash)) != v.Text || statement.AccountDigest(v.Inputs.Account, v.Inputs.PolicyHash) != v.Digest {
			t.Errorf("%s: the account text differs", v.Name)
		}
	}
}

// TestReviewStatementVectors gives each statement vector's verdict by the
// rules the broker and the offline verifier apply.
func TestReviewStatementVectors(t *testing.T) {
	kf := loadKeys(t)
	rule := principal.Rule{Mode: principal.ModeURI, URIPrefix: uriPrefix}
	for _, v := range read[statementVector](t, "review-statement.json") {
		if v.Inputs != nil {
			tm, err := time.Parse(time.RFC3339, v.Inputs.Time)
			if err != nil {
				t.Fatal(err)
			}
			s := statement.Statement{Type: v.Inputs.Type, Origin: v.Inputs.Origin, Request: v.Inputs.Request, Content: v.Inputs.Content,
				Comment: statement.CommentDigest(v.Inputs.Comment), Time: tm}
			if string(s.Marshal()) != v.Text {
				t.Errorf("%s: the code builds %q from the inputs", v.Name, s.Marshal())
			}
		}
		if hexSHA([]byte(v.Text)) != v.SHA256 {
			t.Errorf("%s: sha256 is not the text's", v.Name)
		}
		k := kf.key(t, v.Key)
		if who, err := rule.Of(k.cert); err != nil || who != k.Principal {
			t.Fatalf("%s: key %s names %q (%v), not %s", v.Name, v.Key, who, err, k.Principal)
		}
		reason, err := judgeStatement(k.cert, v)
		judge(t, v.Name, v.Verdict, v.Reason, reason, err)
	}
}

func judgeStatement(cert *x509.Certificate, v statementVector) (string, error) {
	st, err := statement.Parse([]byte(v.Text))
	if err != nil {
		return "malformed", err
	}
	sig, err := base64.StdEncoding.DecodeString(v.Signature)
	if err != nil {
		return "signature-encoding", err
	}
	if err := statement.Verify(cert, []byte(v.Text), sig); err != nil {
		if errors.Is(err, statement.ErrSignatureEncoding) {
			return "signature-encoding", err
		}
		return "signature", err
	}
	now, err := time.Parse(time.RFC3339, v.Expect.Now)
	if err != nil {
		return "expect", err
	}
	e := v.Expect
	if err := statement.Check(st, e.Type, e.Origin, e.Request, e.Content, e.Comment, now); err != nil {
		var m *statement.MismatchError
		if errors.As(err, &m) {
			return m.Field, err
		}
		return "?", err
	}
	return "", nil
}

func TestKeyRotationVectors(t *testing.T) {
	kf := loadKeys(t)
	for _, v := range read[rotationVector](t, "key-rotation.json") {
		oldK, newK := kf.key(t, v.OldKey), kf.key(t, v.NewKey)
		if v.Inputs != nil {
			tm, _ := time.Parse(time.RFC3339, v.Inputs.Time)
			pub, err := x509.ParsePKIXPublicKey(unb64(t, v.Inputs.Key))
			if err != nil {
				t.Fatal(err)
			}
			text, err := statement.Rotation(v.Inputs.Purpose, v.Inputs.Account, v.Inputs.Old, v.Inputs.New, pub, tm)
			if err != nil || string(text) != v.Text {
				t.Errorf("%s: the code builds %q (%v)", v.Name, text, err)
			}
		}
		reason := ""
		r, err := statement.ParseRotation([]byte(v.Text))
		switch {
		case err != nil:
			reason = "malformed"
		case r.Old != oldK.KID || r.New != newK.KID:
			reason = "kid"
		case !verifyBrokerSig(oldK, []byte(v.Text), unb64(t, v.OldSignature)) || !verifyBrokerSig(newK, []byte(v.Text), unb64(t, v.NewSignature)):
			reason = "signature"
		}
		judge(t, v.Name, v.Verdict, v.Reason, reason, err)
	}
}

// verifyBrokerSig checks a signature by one of the broker's keys: ECDSA
// P-256 (ASN.1 DER over SHA-256) or Ed25519.
func verifyBrokerSig(k *testKey, msg, sig []byte) bool {
	switch pub := k.signer.Public().(type) {
	case *ecdsa.PublicKey:
		d := sha256.Sum256(msg)
		return ecdsa.VerifyASN1(pub, d[:], sig)
	case ed25519.PublicKey:
		return ed25519.Verify(pub, msg, sig)
	}
	return false
}

func TestAuditEntryVectors(t *testing.T) {
	kf := loadKeys(t)
	for _, v := range read[entryVector](t, "audit-entry.json") {
		b := unb64(t, v.Entry)
		k := kf.key(t, v.Key)
		if hex.EncodeToString(audit.LeafHash(b)) != v.LeafHash || k.KID != v.KeyID {
			t.Errorf("%s: leaf hash or key id differs", v.Name)
		}
		reason := ""
		e, err := audit.Parse(b)
		switch {
		case err != nil:
			reason = "malformed"
		case !audit.VerifySignature(k.signer.Public().(*ecdsa.PublicKey), b, unb64(t, v.Signature)):
			reason = "signature"
		case e.Prev != v.Prev:
			reason = "prev"
		}
		judge(t, v.Name, v.Verdict, v.Reason, reason, err)
	}
}

func TestCheckpointVectors(t *testing.T) {
	for _, v := range read[checkpointVector](t, "checkpoint.json") {
		reason := ""
		ver, err := note.NewVerifier(v.VerifierKey)
		if err != nil {
			t.Fatal(err)
		}
		cp, err := checkpoint.Open([]byte(v.Note), v.Origin, ver)
		if err != nil {
			reason = "signature"
		} else {
			rf := compact.RangeFactory{Hash: rfc6962.DefaultHasher.HashChildren}
			r := rf.NewEmptyRange(0)
			for _, h := range v.LeafHashes {
				lh, _ := hex.DecodeString(h)
				_ = r.Append(lh, nil)
			}
			root, _ := r.GetRootHash(nil)
			if cp.Size != uint64(len(v.LeafHashes)) || !bytes.Equal(cp.Hash, root) {
				reason = "root"
			}
		}
		judge(t, v.Name, v.Verdict, v.Reason, reason, err)
	}
}
