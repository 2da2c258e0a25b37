package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"

	"github.com/bgbroker/breakglass/server/config"
	"github.com/bgbroker/breakglass/server/store/sqlite"
)

func newDBCmd(stdout, stderr io.Writer) *cobra.Command {
	cmd := &cobra.Command{Use: "db", Short: "Work with the broker's database"}
	var cfgPath, level string
	check := &cobra.Command{
		Use:   "check --config FILE",
		Short: "Check every page of a SQLite store (PRAGMA quick_check)",
		Long: `Start-up reads only the schema and the ends of each table, so that it takes
the same time at any size; the broker runs the full check in the background
once serving, and refuses every transaction if it fails. This command runs
that full check now, on a store the broker may be serving (it only reads),
and exits non-zero if the database is damaged.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, _, err := loadConfig(cfgPath, stderr, level)
			if err != nil {
				return err
			}
			if cfg.Store.Driver == config.DriverPostgres {
				return fmt.Errorf("db check is for SQLite stores; PostgreSQL checks its own pages (data checksums, amcheck)")
			}
			s, err := sqlite.Open(cmd.Context(), sqlite.Config{Path: cfg.Store.SQLite.Path, Synchronous: cfg.Store.SQLite.Synchronous})
			if err != nil {
				return err
			}
			defer s.Close()
			if err := s.Check(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintf(stdout, "%s: ok\n", cfg.Store.SQLite.Path)
			return nil
		},
	}
	check.Flags().StringVar(&cfgPath, "config", "", "configuration file (required)")
	check.Flags().StringVar(&level, "log-level", "", "debug, info, warn or error (overrides log.level)")
	_ = check.MarkFlagRequired("config")
	cmd.AddCommand(check)
	return cmd
}
