import { redactSecrets } from '../observability/index.js'
import { SchemaTooNewError } from '../stores/errors.js'
import type { Migration } from '../stores/migrations.js'
import { checkSchemaVersion, runMigrations } from '../stores/migrations.js'
import {
  badDatabaseArgument,
  databaseUrlSource,
  openAnsweringDatabase,
  uncreatableFileRefusal,
} from './existing-database.js'
import { printable } from './printable.js'
import {
  acceptedDatabaseUrls,
  databaseUrl,
  databaseUrlEnvironmentHelp,
  tooNewLine,
} from './process-support.js'
import { maskedUrl, messageOf, oneLine, UsageError, wantsHelp } from './usage.js'

/** Where `migrateCommand` writes; defaults to the process's stdout and stderr. */
export interface MigrateOutput {
  /** Receives progress lines. */
  readonly stdout?: { write(text: string): unknown }
  /** Receives error messages. */
  readonly stderr?: { write(text: string): unknown }
  /** Where `BREAKWATER_DB_URL` (used when `--db` is not given) is read. @default process.env */
  readonly env?: Readonly<Record<string, string | undefined>>
}

const defaultUrl = 'sqlite:./.breakwater/breakwater.db'

const usage = `usage: breakwater migrate [--db <url>]

Applies the pending migrations of every capability. Exits 1, applying nothing,
when a newer breakwater already migrated one (SCHEMA_TOO_NEW): upgrade first.
Each capability's migrations are applied in one transaction, one capability
after another: stopped (SIGTERM: exit 143), each capability is left migrated
whole or not at all (those printed are); run it again to finish.
  --db <url>  ${acceptedDatabaseUrls}
              (a sqlite: file is created with its folder when missing;
              default ${defaultUrl})

${databaseUrlEnvironmentHelp}`

/**
 * `breakwater migrate --db <url>`: applies every capability's pending migrations and prints
 * what it applied; without `--db`, `BREAKWATER_DB_URL` names the database. Resolves to the exit
 * code: 0 on success, 2 for bad arguments (a malformed or in-memory URL too, or one whose path
 * cannot be a database file: a folder, a folder that cannot be created or takes no new file),
 * 1 when the
 * database fails, or when a newer breakwater migrated one of the capabilities (`SCHEMA_TOO_NEW`,
 * one line per such capability; then nothing is applied). SIGTERM and SIGINT keep their default
 * action (exit 143 and 130): each capability is migrated in a transaction of its own, so a run
 * stopped leaves each one migrated whole or not at all.
 *
 * @example
 * ```ts
 * const code = await migrateCommand(['--db', 'sqlite:./app.db'], { capabilities: { idempotency: migrations } })
 * ```
 */
export async function migrateCommand(
  args: string[],
  deps: { capabilities: Record<string, readonly Migration[]> } & MigrateOutput,
): Promise<number> {
  const out = deps.stdout ?? process.stdout
  const err = deps.stderr ?? process.stderr
  // As every command: --help or -h anywhere, or help first (`migrate --db --help` too).
  if (wantsHelp(args)) {
    out.write(usage)
    return 0
  }
  const values = new Map<string, string>()
  let given = false
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!
    if ((arg === '--db' || arg.startsWith('--db=')) && given) {
      err.write(`breakwater migrate: --db given twice\n\n${usage}`)
      return 2
    }
    if (arg === '--db' || arg.startsWith('--db=')) given = true
    if (arg === '--db') {
      const value = args[i + 1]
      if (value === undefined || value === '' || value.startsWith('--')) {
        err.write(`breakwater migrate: --db needs a database URL\n\n${usage}`)
        return 2
      }
      values.set('--db', value)
      i++
    } else if (arg.startsWith('--db=')) {
      const value = arg.slice('--db='.length)
      if (value === '') {
        err.write(`breakwater migrate: --db needs a database URL\n\n${usage}`)
        return 2
      }
      values.set('--db', value)
    } else {
      // Not redactUrl: the argument is not always a bare URL (`--dbx=postgres://app:pw@db/app`).
      err.write(`breakwater migrate: unknown argument "${oneLine(arg)}"\n\n${usage}`)
      return 2
    }
  }

  const env = deps.env ?? process.env
  let url: string
  try {
    // An in-memory database is refused in every spelling (`sqlite://:memory:` too).
    url = databaseUrl(
      values,
      env,
      defaultUrl,
      'an in-memory database lasts one command, so migrating it keeps nothing: use a sqlite: file',
    )
  } catch (error) {
    if (!(error instanceof UsageError)) throw error
    err.write(`breakwater migrate: ${oneLine(error.message)}\n\n${usage}`)
    return 2
  }
  let db: Awaited<ReturnType<typeof openAnsweringDatabase>>
  try {
    db = await openAnsweringDatabase(url)
  } catch (error) {
    const bad = badDatabaseArgument(
      uncreatableFileRefusal(url, error) ?? error,
      databaseUrlSource(url, env),
    )
    if (bad !== undefined) {
      err.write(`breakwater migrate: ${oneLine(bad)}\n`)
      return 2
    }
    err.write(
      `breakwater migrate: cannot open ${printable(maskedUrl(url))}: ${redactSecrets(messageOf(error))}\n`,
    )
    return 1
  }
  try {
    const names = Object.keys(deps.capabilities).sort()
    if (names.length === 0) out.write('no capability has migrations\n')
    // A database a newer breakwater migrated is refused as a whole, before any capability is
    // migrated: one that is behind is left too, as this release is not the one to run there.
    // (Each run checks again inside its lock, for a newer `migrate` committing meanwhile.)
    const tooNew: SchemaTooNewError[] = []
    for (const capability of names) {
      try {
        await checkSchemaVersion(db, capability, deps.capabilities[capability]!)
      } catch (error) {
        if (!(error instanceof SchemaTooNewError)) throw error
        tooNew.push(error)
      }
    }
    for (const error of tooNew) err.write(`breakwater migrate: ${tooNewLine(error)}\n`)
    if (tooNew.length > 0) return 1
    for (const capability of names) {
      const applied = await runMigrations(db, capability, deps.capabilities[capability]!)
      if (applied.length === 0) {
        out.write(`${capability}: up to date\n`)
      }
      for (const migration of applied) {
        out.write(`${capability}: applied ${migration.version} ${migration.name}\n`)
      }
    }
    return 0
  } catch (error) {
    const message =
      error instanceof SchemaTooNewError ? tooNewLine(error) : redactSecrets(messageOf(error))
    err.write(`breakwater migrate: ${message}\n`)
    return 1
  } finally {
    await db.close().catch(() => {})
  }
}
