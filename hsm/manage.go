package hsm

import (
	"bytes"
	"context"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/ThalesGroup/crypto11"
	"github.com/miekg/pkcs11"
)

// GenerateRequest asks for a new key pair inside the token.
type GenerateRequest struct {
	Purpose Purpose
	Label   string
	// ID is the CKA_ID; random 16 bytes when empty.
	ID []byte
}

// Generated is the result of a key generation.
type Generated struct {
	Key *KeyInfo
	// Unsupported names the hardening attributes the token refused, which
	// the key therefore lacks; the ceremony record reports them.
	Unsupported []string
}

// MaxLabelLen bounds key labels; PKCS#11 labels are free text but ours end
// up in logs, configs and JWKS metadata.
const MaxLabelLen = 64

func validLabel(label string) error {
	if label == "" {
		return fmt.Errorf("a key label is required")
	}
	if len(label) > MaxLabelLen {
		return fmt.Errorf("key label is %d bytes; at most %d", len(label), MaxLabelLen)
	}
	for _, r := range label {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r)) {
			return fmt.Errorf("key label %q has %q: use letters, digits, '-', '_', '.' or ':'", label, r)
		}
	}
	return nil
}

// GenerateKey makes a key pair for req.Purpose inside the token. A label or
// ID that any object on the token already has is refused.
func (m *Module) GenerateKey(ctx context.Context, req GenerateRequest) (*Generated, error) {
	if err := validLabel(req.Label); err != nil {
		return nil, err
	}
	if _, err := ParsePurpose(string(req.Purpose)); err != nil {
		return nil, err
	}
	id := req.ID
	if len(id) == 0 {
		id = make([]byte, 16)
		if _, err := rand.Read(id); err != nil {
			return nil, err
		}
	}
	var out *Generated
	err := m.do(ctx, func(g *generation) error {
		if err := g.checkUnused(req.Label, id); err != nil {
			return err
		}
		var (
			priv        pkcs11.ObjectHandle
			unsupported []string
			err         error
		)
		if req.Purpose.Algorithm() == EdDSA {
			priv, unsupported, err = g.generateEd25519(req.Purpose, req.Label, id)
		} else {
			priv, unsupported, err = g.generateECDSA(req.Purpose, req.Label, id)
		}
		if err != nil {
			return err
		}
		info, err := g.keyInfo(priv)
		if err != nil {
			return err
		}
		out = &Generated{Key: info, Unsupported: unsupported}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// checkUnused refuses a label or ID that any object already carries.
func (g *generation) checkUnused(label string, id []byte) error {
	hs, err := g.findObjects([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label)})
	if err != nil {
		return err
	}
	if len(hs) > 0 {
		return fmt.Errorf("%w: an object labelled %q is already on the token; choose another label (see `breakglassd hsm list`)", ErrKeyExists, label)
	}
	hs, err = g.findObjects([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, id)})
	if err != nil {
		return err
	}
	if len(hs) > 0 {
		return fmt.Errorf("%w: an object with ID %x is already on the token; choose another ID", ErrKeyExists, id)
	}
	return nil
}

// retryable reports whether a generation failure may be a hardening
// attribute the token does not implement.
func attributeRefused(err error) bool {
	code, ok := p11Code(err)
	return ok && (code == ckrAttributeTypeInvalid || code == pkcs11.CKR_ATTRIBUTE_VALUE_INVALID || code == pkcs11.CKR_TEMPLATE_INCONSISTENT)
}

// generateWith tries the full template and drops optional attributes from
// the end, one at a time, while the token refuses them.
func generateWith(required []*pkcs11.Attribute, optional []optionalAttr, gen func(priv []*pkcs11.Attribute) (pkcs11.ObjectHandle, error)) (pkcs11.ObjectHandle, []string, error) {
	var dropped []string
	for {
		tmpl := slices.Clone(required)
		for _, o := range optional {
			tmpl = append(tmpl, o.attr)
		}
		h, err := gen(tmpl)
		if err == nil {
			slices.Reverse(dropped)
			return h, dropped, nil
		}
		if !attributeRefused(err) || len(optional) == 0 {
			return 0, nil, err
		}
		dropped = append(dropped, optional[len(optional)-1].name)
		optional = optional[:len(optional)-1]
	}
}

func (g *generation) generateECDSA(p Purpose, label string, id []byte) (pkcs11.ObjectHandle, []string, error) {
	required, optional := privateTemplate(p, label, id)
	pubTmpl := publicTemplate(p, label, id)
	_, unsupported, err := generateWith(required, optional, func(priv []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
		pubSet, privSet := crypto11.NewAttributeSet(), crypto11.NewAttributeSet()
		for _, a := range pubTmpl {
			pubSet[a.Type] = a
		}
		for _, a := range priv {
			privSet[a.Type] = a
		}
		_, err := g.c11.GenerateECDSAKeyPairWithAttributes(pubSet, privSet, elliptic.P256())
		return 0, err
	})
	if err != nil {
		return 0, nil, fmt.Errorf("generating ECDSA P-256 key %q: %w", label, err)
	}
	// crypto11 does not hand out the private handle: find it by ID.
	h, err := g.findPrivate(label, id)
	return h, unsupported, err
}

func (g *generation) generateEd25519(p Purpose, label string, id []byte) (pkcs11.ObjectHandle, []string, error) {
	required, optional := privateTemplate(p, label, id)
	pubTmpl := publicTemplate(p, label, id)
	mech := []*pkcs11.Mechanism{pkcs11.NewMechanism(ckmECEdwardsKeyPairGen, nil)}
	h, unsupported, err := generateWith(required, optional, func(priv []*pkcs11.Attribute) (pkcs11.ObjectHandle, error) {
		var h pkcs11.ObjectHandle
		err := g.withSession(func(s pkcs11.SessionHandle) error {
			var err error
			_, h, err = g.raw.GenerateKeyPair(s, mech, pubTmpl, priv)
			return err
		})
		return h, err
	})
	if err != nil {
		if code, ok := p11Code(err); ok && code == pkcs11.CKR_MECHANISM_INVALID {
			return 0, nil, fmt.Errorf("the token does not support Ed25519 (CKM_EC_EDWARDS_KEY_PAIR_GEN); SoftHSM2 2.6 or later does: %w", err)
		}
		return 0, nil, fmt.Errorf("generating Ed25519 key %q: %w", label, err)
	}
	return h, unsupported, nil
}

// findPrivate returns the one private key with this label and ID.
func (g *generation) findPrivate(label string, id []byte) (pkcs11.ObjectHandle, error) {
	tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)}
	if label != "" {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_LABEL, label))
	}
	if len(id) > 0 {
		tmpl = append(tmpl, pkcs11.NewAttribute(pkcs11.CKA_ID, id))
	}
	hs, err := g.findObjects(tmpl)
	if err != nil {
		return 0, err
	}
	switch len(hs) {
	case 0:
		return 0, errNoKey
	case 1:
		return hs[0], nil
	}
	return 0, fmt.Errorf("%w: %d private keys match label %q and ID %x; select by both", ErrKeyNotFound, len(hs), label, id)
}

var errNoKey = fmt.Errorf("%w", ErrKeyNotFound)

// keyInfo reads a private key's attributes and its public half.
func (g *generation) keyInfo(priv pkcs11.ObjectHandle) (*KeyInfo, error) {
	types := []uint{pkcs11.CKA_LABEL, pkcs11.CKA_ID, pkcs11.CKA_KEY_TYPE, pkcs11.CKA_SUBJECT, pkcs11.CKA_ALLOWED_MECHANISMS}
	for _, b := range boolAttrs {
		types = append(types, b.typ)
	}
	attrs, err := g.attributes(priv, types)
	if err != nil {
		return nil, err
	}
	info := &KeyInfo{
		Label:      string(attrs[pkcs11.CKA_LABEL]),
		ID:         attrs[pkcs11.CKA_ID],
		Purpose:    purposeFromSubject(attrs[pkcs11.CKA_SUBJECT]),
		Algorithm:  Unknown,
		Attributes: map[string]bool{},
	}
	for _, b := range boolAttrs {
		if v, ok := attrs[b.typ]; ok && len(v) == 1 {
			info.Attributes[b.name] = v[0] != 0
		}
	}
	if v, ok := attrs[pkcs11.CKA_ALLOWED_MECHANISMS]; ok {
		for _, mech := range decodeULongs(v) {
			info.AllowedMechanisms = append(info.AllowedMechanisms, mechanismName(mech))
		}
	}
	keyType := ulong(attrs[pkcs11.CKA_KEY_TYPE])
	if len(info.ID) == 0 {
		return info, nil
	}
	pubs, err := g.findObjects([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY),
		pkcs11.NewAttribute(pkcs11.CKA_ID, info.ID),
	})
	if err != nil {
		return nil, err
	}
	if len(pubs) != 1 {
		return info, nil
	}
	pa, err := g.attributes(pubs[0], []uint{pkcs11.CKA_EC_PARAMS, pkcs11.CKA_EC_POINT})
	if err != nil {
		return nil, err
	}
	if pub, alg, err := parsePublic(keyType, pa[pkcs11.CKA_EC_PARAMS], pa[pkcs11.CKA_EC_POINT]); err == nil {
		info.Public, info.Algorithm = pub, alg
	}
	return info, nil
}

func ulong(b []byte) uint {
	switch len(b) {
	case 8:
		return uint(binary.NativeEndian.Uint64(b))
	case 4:
		return uint(binary.NativeEndian.Uint32(b))
	}
	return ^uint(0)
}

// ListKeys returns every private key on the token with its public half,
// sorted by label.
func (m *Module) ListKeys(ctx context.Context) ([]*KeyInfo, error) {
	var out []*KeyInfo
	err := m.do(ctx, func(g *generation) error {
		out = nil
		hs, err := g.findObjects([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY)})
		if err != nil {
			return err
		}
		for _, h := range hs {
			info, err := g.keyInfo(h)
			if err != nil {
				return err
			}
			out = append(out, info)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Label != out[j].Label {
			return out[i].Label < out[j].Label
		}
		return bytes.Compare(out[i].ID, out[j].ID) < 0
	})
	return out, nil
}

// FindKey returns the key with this label and/or ID (at least one is needed).
func (m *Module) FindKey(ctx context.Context, label string, id []byte) (*KeyInfo, error) {
	if label == "" && len(id) == 0 {
		return nil, fmt.Errorf("%w: give a key label or ID", ErrKeyNotFound)
	}
	var info *KeyInfo
	err := m.do(ctx, func(g *generation) error {
		h, err := g.findPrivate(label, id)
		if err != nil {
			return err
		}
		info, err = g.keyInfo(h)
		return err
	})
	if errors.Is(err, errNoKey) {
		return nil, m.notFound(ctx, label, id)
	}
	if err != nil {
		return nil, err
	}
	if info.Public == nil {
		return nil, fmt.Errorf("%w: key %q has no matching public key object (same CKA_ID) on the token", ErrKeyNotFound, info.Label)
	}
	return info, nil
}

// notFound builds a message naming the keys that do exist.
func (m *Module) notFound(ctx context.Context, label string, id []byte) error {
	what := "label " + strconv.Quote(label)
	if label == "" {
		what = fmt.Sprintf("ID %x", id)
	} else if len(id) > 0 {
		what += fmt.Sprintf(" and ID %x", id)
	}
	keys, err := m.ListKeys(ctx)
	if err != nil || len(keys) == 0 {
		return fmt.Errorf("%w: no key with %s on token %q; the token holds no keys (create them with `breakglassd hsm keygen`)", ErrKeyNotFound, what, m.token.Label)
	}
	var names []string
	for _, k := range keys {
		names = append(names, fmt.Sprintf("%q (%s)", k.Label, k.Purpose))
	}
	return fmt.Errorf("%w: no key with %s on token %q; keys present: %s", ErrKeyNotFound, what, m.token.Label, strings.Join(names, ", "))
}

// DestroyKey destroys a key pair (private and public objects with its
// label and ID). Keys made not destroyable (audit and checkpoint keys)
// are refused by the token.
func (m *Module) DestroyKey(ctx context.Context, label string, id []byte) error {
	return m.do(ctx, func(g *generation) error {
		hs, err := g.findObjects([]*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_LABEL, label), pkcs11.NewAttribute(pkcs11.CKA_ID, id)})
		if err != nil {
			return err
		}
		if len(hs) == 0 {
			return fmt.Errorf("%w: no key %q with ID %x to destroy", ErrKeyNotFound, label, id)
		}
		for _, h := range hs {
			if err := g.withSession(func(s pkcs11.SessionHandle) error { return g.raw.DestroyObject(s, h) }); err != nil {
				return fmt.Errorf("destroying %q: %w", label, err)
			}
		}
		g.mu.Lock()
		delete(g.ecKeys, hex.EncodeToString(id))
		delete(g.edKeys, hex.EncodeToString(id))
		g.mu.Unlock()
		return nil
	})
}
