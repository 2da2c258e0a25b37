// Package config reads the broker's YAML configuration file.
package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"go.yaml.in/yaml/v3"

	"github.com/bgbroker/breakglass/hsm"
)

// Config is the whole configuration file.
type Config struct {
	HSM  hsm.Config `yaml:"hsm"`
	Keys Keys       `yaml:"keys"`
}

// Keys names the HSM keys the broker signs with, by label.
type Keys struct {
	Token      string `yaml:"token"`
	Audit      string `yaml:"audit"`
	Checkpoint string `yaml:"checkpoint"`
}

// Load reads and decodes path. Unknown fields are errors: a misspelt
// setting must not silently fall back to a default in a security tool.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	return Parse(b, path)
}

// Parse decodes a configuration; name is used in messages.
func Parse(b []byte, name string) (*Config, error) {
	var c Config
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &c, nil
}
