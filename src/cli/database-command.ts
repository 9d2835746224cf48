// The skeleton every `breakwater <capability> <command> --db <url>` admin command shares:
// help, argument parsing, opening the database with the exit codes the CLI promises, running
// the command, and closing the database whatever happens. Each command brings its own parser,
// its own runner and the errors it answers as "not found" rather than as a failure.

import { BreakwaterError } from '../core/errors.js'
import { redactSecrets } from '../observability/index.js'
import { SchemaTooNewError } from '../stores/errors.js'
import { checkSchemaVersion, type Migration, type SqlDriver } from '../stores/index.js'
import {
  badDatabaseArgument,
  databaseUrlSource,
  migrateCommandFor,
  openExistingDatabase,
} from './existing-database.js'
import { printable } from './printable.js'
import { tooNewLine } from './process-support.js'
import { maskedUrl, messageOf, oneLine, UsageError, wantsHelp } from './usage.js'

/** Where a command writes (process.stdout / process.stderr by default). */
export interface TextSink {
  write(text: string): unknown
}

/** What a database admin command needs besides its arguments; everything has a default. */
export interface DatabaseCommandDeps {
  /** Receives the output. @default process.stdout */
  readonly stdout?: TextSink
  /** Receives error messages. @default process.stderr */
  readonly stderr?: TextSink
  /**
   * Opens the database a URL names. @default openExistingDatabase (a SQLite file must exist and
   * be migrated; nothing is created or changed otherwise)
   */
  readonly openDatabase?: (url: string) => Promise<SqlDriver>
  /** Where `BREAKWATER_DB_URL` (used when `--db` is not given) is read. @default process.env */
  readonly env?: Readonly<Record<string, string | undefined>>
}

/** One database admin command, as {@link runDatabaseCommand} runs it. */
export interface DatabaseCommand<P extends { readonly url: string }> {
  /** The words after `breakwater`, for messages (`outbox`, `saga`). */
  readonly name: string
  /** The help text, printed for `--help` and after a usage error. */
  readonly usage: string
  /**
   * Reads the arguments, and `env` for what a flag not given stands for (`BREAKWATER_DB_URL`);
   * throws {@link UsageError} for bad ones.
   */
  parse(args: readonly string[], env: Readonly<Record<string, string | undefined>>): P
  /**
   * The capabilities whose tables the parsed command reads or writes, with this code's
   * migrations of each: a database where a newer breakwater migrated one of them is refused
   * (`SCHEMA_TOO_NEW`) before the command runs, the reading commands too.
   */
  capabilities(parsed: P): Readonly<Record<string, readonly Migration[]>>
  /** Runs the parsed command; resolves to the exit code. */
  execute(parsed: P, db: SqlDriver, out: TextSink, err: TextSink): Promise<number>
  /**
   * Error codes that are the user's answer, not a failure (an unknown saga): printed as they
   * are, exit code 1, without the migration hint.
   */
  readonly expectedErrors?: readonly string[]
}

/**
 * Runs `command` with `args`. Resolves to the exit code: 0 on success, 2 for bad arguments or a
 * malformed or in-memory `--db` (or `BREAKWATER_DB_URL`), or one whose path cannot be a database
 * file (a folder: any INVALID_OPTION from opening it), 1 when the database cannot be opened,
 * when a newer breakwater migrated a capability the command uses (`SCHEMA_TOO_NEW`, one line
 * each; the command does not run), or when the command fails (with a hint to run
 * `breakwater migrate` when its tables are missing).
 * Messages never show a URL's password.
 *
 * @example
 * ```ts
 * const code = await runDatabaseCommand(sagaAdmin, ['list', '--db', 'sqlite:./app.db'], {})
 * ```
 */
export async function runDatabaseCommand<P extends { readonly url: string }>(
  command: DatabaseCommand<P>,
  args: readonly string[],
  deps: DatabaseCommandDeps,
): Promise<number> {
  const out = deps.stdout ?? process.stdout
  const err = deps.stderr ?? process.stderr
  const env = deps.env ?? process.env
  const prefix = `breakwater ${command.name}:`
  if (wantsHelp(args)) {
    out.write(command.usage)
    return 0
  }
  let parsed: P
  try {
    parsed = command.parse(args, env)
  } catch (error) {
    if (!(error instanceof UsageError)) throw error
    // Redacted (and made one line) here, once, for every parser: a message quotes the argument at fault, and a
    // database URL given without --db (`saga list postgres://app:pw@db/app`) is such an argument.
    err.write(`${prefix} ${oneLine(error.message)}\n\n${command.usage}`)
    return 2
  }
  // Escaped too: the line goes to a terminal, and a URL may hold a control character.
  const url = printable(maskedUrl(parsed.url))
  let db: SqlDriver
  try {
    db = await (deps.openDatabase === undefined
      ? openExistingDatabase(parsed.url, env)
      : deps.openDatabase(parsed.url))
  } catch (error) {
    const bad = badDatabaseArgument(error, databaseUrlSource(parsed.url, env))
    if (bad !== undefined) {
      err.write(`${prefix} ${oneLine(bad)}\n`)
      return 2
    }
    err.write(`${prefix} cannot open ${url}: ${redactSecrets(messageOf(error))}\n`)
    return 1
  }
  try {
    // An older process never runs on a schema it was not written for (docs/architecture.md),
    // as `migrate`, `relay` and `saga worker` refuse: a write could break what the newer
    // release relies on, and a read could misreport rows whose meaning changed.
    const tooNew: SchemaTooNewError[] = []
    for (const [capability, migrations] of Object.entries(command.capabilities(parsed))) {
      try {
        await checkSchemaVersion(db, capability, migrations)
      } catch (error) {
        if (!(error instanceof SchemaTooNewError)) throw error
        tooNew.push(error)
      }
    }
    for (const error of tooNew) err.write(`${prefix} ${tooNewLine(error)}\n`)
    if (tooNew.length > 0) return 1
    return await command.execute(parsed, db, out, err)
  } catch (error) {
    if (BreakwaterError.is(error) && command.expectedErrors?.includes(error.code) === true) {
      err.write(`${prefix} ${redactSecrets(error.message)}\n`)
      return 1
    }
    const message = messageOf(error)
    const hint = /no such table|does not exist/.test(message)
      ? ` (run ${migrateCommandFor(parsed.url, env)} first)`
      : ''
    err.write(`${prefix} ${redactSecrets(message)}${hint}\n`)
    return 1
  } finally {
    await db.close().catch(() => {})
  }
}
