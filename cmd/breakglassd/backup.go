package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/bgbroker/breakglass/server/backup"
	"github.com/bgbroker/breakglass/server/config"
)

func newBackupCmd(stdout, stderr io.Writer) *cobra.Command {
	var cfgPath, out, level string
	cmd := &cobra.Command{
		Use:   "backup --config FILE --out DIR",
		Short: "Write a consistent copy of the store and its latest checkpoint to a new directory",
		Long: `Copies a SQLite store online (the broker may keep serving) into DIR/broker.db,
with the latest signed checkpoint in DIR/checkpoint and DIR/manifest.json.

A PostgreSQL store gets the checkpoint and the manifest; dump the database
itself afterwards, so that the dump extends the checkpoint:

  pg_dump --format=custom --file DIR/broker.pgdump "$DSN"`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(cfgPath, stderr, level)
			if err != nil {
				return err
			}
			m, err := backup.Backup(cmd.Context(), cfg, out, log)
			if err != nil {
				return err
			}
			if m.Driver == config.DriverPostgres {
				fmt.Fprintf(stderr, "checkpoint and manifest written to %s; now dump the database (the dump extends the checkpoint):\n  pg_dump --format=custom --file %s \"$DSN\"\n",
					out, filepath.Join(out, "broker.pgdump"))
			}
			return writeJSON(stdout, map[string]any{"backup": out, "manifest": m})
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "configuration file (required)")
	cmd.Flags().StringVar(&out, "out", "", "new directory to write the backup to (required)")
	cmd.Flags().StringVar(&level, "log-level", "", "debug, info, warn or error (overrides log.level)")
	_ = cmd.MarkFlagRequired("config")
	_ = cmd.MarkFlagRequired("out")
	return cmd
}

func newRestoreCmd(stdout, stderr io.Writer) *cobra.Command {
	var cfgPath, level, operator string
	var o backup.RestoreOptions
	cmd := &cobra.Command{
		Use:   "restore --config FILE --from DIR [--checkpoint FILE]... [--force --reason TEXT]",
		Short: "Restore the store from a backup, refusing one that would roll the audit log back",
		Long: `Stop the broker first. The backup's log must extend the newest signed checkpoint
the restore can find: the current database's, the backup's own, and every
--checkpoint given (bgctl audit checkpoint output, a checkpoint.signed event's
note, an auditor's last verified checkpoint). A backup that does not would undo
entries, revocations among them, and is refused with nothing changed.

--force --reason restores it anyway: the rollback is written to the audit log
as a signed store_restored entry and announced as a store.restored event, and
bgctl audit verify lists it.

A SQLite database is replaced by the backup's copy; the one it replaces is
kept beside it as broker.db.before-restore-TIME. A PostgreSQL store is
restored in place with pg_restore first; this command then checks it against
--checkpoint and records the restore.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, log, err := loadConfig(cfgPath, stderr, level)
			if err != nil {
				return err
			}
			o.Operator = operatorName(operator)
			res, err := backup.Restore(cmd.Context(), cfg, o, log)
			var refused *backup.RefusedError
			if errors.As(err, &refused) {
				return exitError{code: 3, msg: err.Error()}
			}
			if err != nil {
				return err
			}
			return writeJSON(stdout, map[string]any{"restored": true, "entry": res.Entry, "backup_entries": res.BackupSize,
				"newest_checkpoint": res.Newest, "newest_checkpoint_from": res.NewestFrom, "consulted": res.Sources, "forced": res.Forced,
				"previous_database": res.MovedAside, "operator": o.Operator})
		},
	}
	cmd.Flags().StringVar(&cfgPath, "config", "", "configuration file (required)")
	cmd.Flags().StringVar(&o.From, "from", "", "backup directory (breakglassd backup)")
	cmd.Flags().StringArrayVar(&o.Checkpoints, "checkpoint", nil, "a signed checkpoint of this log the restored log must extend (repeatable)")
	cmd.Flags().BoolVar(&o.Force, "force", false, "restore even if the backup does not extend the newest checkpoint (audited)")
	cmd.Flags().StringVar(&o.Reason, "reason", "", "why a forced restore is needed (written to the audit log)")
	cmd.Flags().StringVar(&operator, "operator", "", "name recorded as the operator (default: the user running the command)")
	cmd.Flags().StringVar(&level, "log-level", "", "debug, info, warn or error (overrides log.level)")
	_ = cmd.MarkFlagRequired("config")
	return cmd
}
