import { InvalidOptionError } from '../core/errors.js'
import { redactSecrets } from '../observability/index.js'
import {
  cancelSaga,
  getSaga,
  getSagaTimeline,
  listSagas,
  pruneFlowEvents,
  pruneSagas,
  retrySaga,
  type SagaDefinition,
  type SagaDefinitionProblem,
  type SagaInstance,
  SagaNotFoundError,
  SagaStateConflictError,
  type SagaStatus,
  type SagaSummary,
  type SagaTimelineEntry,
  sagaMigrations,
  sagaStatuses,
} from '../saga/index.js'
import type { SqlDriver } from '../stores/index.js'
import { type DatabaseCommandDeps, runDatabaseCommand, type TextSink } from './database-command.js'
import { dedupeWindow } from './duration.js'
import { printable } from './printable.js'
import { acceptedDatabaseUrls, databaseUrl, databaseUrlEnvironmentHelp } from './process-support.js'
import {
  addSwitch,
  counted,
  oneLine,
  redactedJson,
  refuseOptionFirst,
  UsageError,
} from './usage.js'

/** What `sagaCommand` needs besides its arguments; everything has a default. */
export type SagaCommandDeps = DatabaseCommandDeps

const defaultUrl = 'sqlite:./.breakwater/breakwater.db'

const usage = `usage: breakwater saga <command> [options] [--db <url>]

commands:
  list [--status <status>] [--name <name>] [--limit <n>] [--json] [--module <file>]
                       list instances, newest first: at most --limit (default 50; a
                       line under the table says when more match)
  show <id> [--json] [--module <file>]
                       print an instance and its timeline (each step, attempt, error,
                       compensation)
                       --module: the module your workers run (as for \`saga worker\`):
                       instances it has no definition (or other steps) for are marked
  retry <id> [--reason <text>] [--by <who>]
                       re-queue a parked (failed) saga: its compensation resumes
  cancel <id> [--reason <text>] [--by <who>]
                       cancel a running saga: its completed steps are compensated (when
                       a cancel is already pending it says so, records nothing, exits 0)
  worker --module <file> [options]
                       run the sagas a module defines as a process until SIGTERM (see
                       \`breakwater saga worker --help\`)
  prune [--older-than <duration>] [--include-parked] [--allow-short-window]
                       remove completed, compensated and cancelled instances that ended
                       longer ago than the duration (default 30d: 30d, 12h, 90m, 45s,
                       500ms), with their timelines, and tracked flows whose last event
                       is that old; --include-parked removes parked (failed) instances
                       untouched that long too. A removed instance's id is free again:
                       keep the window longer than a duplicate start can take to arrive
                       (under 1h is refused unless --allow-short-window is given)

options:
  --db <url>  ${acceptedDatabaseUrls}
              (default ${defaultUrl})

${databaseUrlEnvironmentHelp}
statuses: ${sagaStatuses.join(', ')}
`

interface Parsed {
  readonly command: 'list' | 'show' | 'retry' | 'cancel' | 'prune'
  readonly id: string | undefined
  readonly url: string
  readonly status: SagaStatus | undefined
  readonly name: string | undefined
  readonly limit: number
  readonly json: boolean
  readonly reason: string | undefined
  readonly by: string
  /** prune: milliseconds. */
  readonly olderThanMs: number
  /** prune: the window as given (or the default), for the report. */
  readonly olderThan: string
  readonly includeParked: boolean
  /** list, show: the module whose definitions instances are checked against. */
  readonly module: string | undefined
}

// The most instances `saga list` shows: listSagas' own cap.
const maxListLimit = 100_000

const valueFlags = new Set([
  '--db',
  '--status',
  '--name',
  '--limit',
  '--reason',
  '--by',
  '--older-than',
  '--module',
])
const booleanFlags = new Set(['--json', '--include-parked', '--allow-short-window'])
const allowed: Record<Parsed['command'], readonly string[]> = {
  list: ['--db', '--status', '--name', '--limit', '--json', '--module'],
  show: ['--db', '--json', '--module'],
  retry: ['--db', '--reason', '--by'],
  cancel: ['--db', '--reason', '--by'],
  prune: ['--db', '--older-than', '--include-parked', '--allow-short-window'],
}

function parse(args: readonly string[], env: Readonly<Record<string, string | undefined>>): Parsed {
  const [command, ...rest] = args
  if (command === undefined) throw new UsageError('a command is needed')
  refuseOptionFirst(command, 'breakwater saga list|show|retry|cancel|prune|worker [options]')
  // Own keys only: `in` also finds Object.prototype's members (constructor, toString).
  if (!Object.hasOwn(allowed, command)) throw new UsageError(`unknown command "${command}"`)
  const cmd = command as Parsed['command']
  const values = new Map<string, string>()
  const positional: string[] = []
  const flags = new Set<string>()
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i]!
    if (!arg.startsWith('--')) {
      positional.push(arg)
      continue
    }
    const eq = arg.indexOf('=')
    const flag = eq < 0 ? arg : arg.slice(0, eq)
    if (!allowed[cmd].includes(flag)) {
      throw new UsageError(`unknown option "${flag}" for "saga ${cmd}"`)
    }
    if (booleanFlags.has(flag)) {
      addSwitch(flags, flag, eq)
      continue
    }
    if (!valueFlags.has(flag)) throw new UsageError(`unknown option "${flag}"`)
    let value: string | undefined
    if (eq >= 0) value = arg.slice(eq + 1)
    else {
      value = rest[i + 1]
      i++
    }
    if (value === undefined || value === '' || (eq < 0 && value.startsWith('--'))) {
      throw new UsageError(`${flag} needs a value`)
    }
    if (values.has(flag)) throw new UsageError(`${flag} given twice`)
    values.set(flag, value)
  }
  const needsId = cmd !== 'list' && cmd !== 'prune'
  if (needsId && positional.length !== 1) {
    throw new UsageError(`saga ${cmd} needs exactly one saga id`)
  }
  if (needsId && positional[0] === '') throw new UsageError('the saga id must not be empty')
  if (!needsId && positional.length > 0) {
    throw new UsageError(`unexpected argument "${positional[0]}"`)
  }
  const status = values.get('--status')
  if (status !== undefined && !(sagaStatuses as readonly string[]).includes(status)) {
    throw new UsageError(`--status must be one of ${sagaStatuses.join(', ')}, got "${status}"`)
  }
  const limitText = values.get('--limit')
  const limit = limitText === undefined ? 50 : Number(limitText)
  // Digits only: Number() would also take 0x10, 1e2, 1.0 and ' 5'.
  if ((limitText !== undefined && !/^\d+$/.test(limitText)) || limit < 1 || limit > maxListLimit) {
    throw new UsageError(`--limit must be an integer from 1 to ${maxListLimit}, got "${limitText}"`)
  }
  return {
    command: cmd,
    id: positional[0],
    url: databaseUrl(values, env, defaultUrl),
    status: status as SagaStatus | undefined,
    name: values.get('--name'),
    limit,
    json: flags.has('--json'),
    reason: values.get('--reason'),
    by: values.get('--by') ?? 'cli',
    olderThanMs: dedupeWindow({
      flag: '--older-than',
      text: values.get('--older-than'),
      fallback: '30d',
      allowFlag: '--allow-short-window',
      allowed: flags.has('--allow-short-window'),
      risk: "a removed instance's id is free again, and a duplicate start (a redelivered message that starts a saga by a derived id) arriving after it is removed runs again as a new saga; tracked flows still going are removed too (0d removes every finished instance and flow)",
      outlast: 'a duplicate start can take to arrive',
    }),
    olderThan: values.get('--older-than') ?? '30d',
    includeParked: flags.has('--include-parked'),
    module: values.get('--module'),
  }
}

/**
 * `breakwater saga list|show|retry|cancel|prune --db <url>`: inspects and operates saga
 * instances, and removes old finished ones; `breakwater saga worker --module <file>` runs
 * sagas as a process (see `sagaWorkerCommand`).
 * Resolves to the exit code: 0 on success, 2 for bad arguments, 1 when the saga is unknown,
 * the operation does not apply to its status, or the database fails.
 *
 * @example
 * ```ts
 * const code = await sagaCommand(['show', 'order-o-42', '--db', 'sqlite:./app.db'])
 * ```
 */
export async function sagaCommand(args: string[], deps: SagaCommandDeps = {}): Promise<number> {
  // The worker is a long-running process, not a one-off admin command: its own module.
  if (args[0] === 'worker') {
    const { sagaWorkerCommand } = await import('./saga-worker.js')
    return sagaWorkerCommand(args.slice(1), {
      ...(deps.stdout === undefined ? {} : { stdout: deps.stdout }),
      ...(deps.stderr === undefined ? {} : { stderr: deps.stderr }),
      ...(deps.env === undefined ? {} : { env: deps.env }),
    })
  }
  return runDatabaseCommand(
    {
      name: 'saga',
      usage,
      parse,
      // Every command reads or writes the saga tables (prune: the tracked flows' too).
      capabilities: () => ({ saga: sagaMigrations }),
      execute,
      expectedErrors: ['SAGA_NOT_FOUND', 'SAGA_STATE_CONFLICT'],
    },
    args,
    deps,
  )
}

async function execute(
  parsed: Parsed,
  db: SqlDriver,
  out: TextSink,
  err: TextSink,
): Promise<number> {
  switch (parsed.command) {
    case 'list':
    case 'show':
      return withModule(parsed, err, async (definitions) => {
        const given = definitions === undefined ? {} : { definitions }
        if (parsed.command === 'list') {
          // One more than shown, to tell whether more match: the first --limit read as all of
          // them (`--status failed` counted 50 parked sagas where 73 were). At the library's
          // cap of 100000 the one more cannot be read, and the note says more may match.
          const read = await listSagas(db, {
            ...(parsed.status === undefined ? {} : { status: parsed.status }),
            ...(parsed.name === undefined ? {} : { name: parsed.name }),
            limit: Math.min(parsed.limit + 1, maxListLimit),
            ...given,
          })
          const sagas = read.slice(0, parsed.limit)
          if (parsed.json) {
            // A bare array, as before: a script reads --limit instances at most.
            out.write(`${redactedJson(sagas)}\n`)
            return 0
          }
          out.write(formatList(sagas, definitions))
          if (
            read.length > parsed.limit ||
            (parsed.limit === maxListLimit && read.length === parsed.limit)
          )
            out.write(
              `(the newest ${parsed.limit}; more instances ${read.length > parsed.limit ? 'match' : 'may match'}: give a larger --limit, or filter with --status or --name)\n`,
            )
          return 0
        }
        const id = parsed.id!
        const saga = await getSaga(db, id, given)
        if (saga === undefined) return refused(new SagaNotFoundError(id), err)
        const timeline = await getSagaTimeline(db, id)
        out.write(
          parsed.json
            ? `${redactedJson({ saga, timeline })}\n`
            : formatShow(saga, timeline, definitions),
        )
        return 0
      })
    case 'retry':
      try {
        await retrySaga(db, parsed.id!, adminOptions(parsed))
      } catch (error) {
        return refused(error, err)
      }
      // Escaped as `list` shows it: the id matched a row, which may hold anything (see printable).
      out.write(
        `saga ${printable(parsed.id!)}: re-queued; its compensation resumes on the next worker\n`,
      )
      return 0
    case 'cancel': {
      let outcome: Awaited<ReturnType<typeof cancelSaga>>
      try {
        outcome = await cancelSaga(db, parsed.id!, adminOptions(parsed))
      } catch (error) {
        return refused(error, err)
      }
      // A second cancel changes nothing (the first request and its reason stand): say so.
      out.write(
        outcome === 'already-requested'
          ? `saga ${printable(parsed.id!)}: cancel already requested; nothing recorded (the first request and its reason stand)\n`
          : `saga ${printable(parsed.id!)}: cancel requested; its completed steps will be compensated\n`,
      )
      return 0
    }
    case 'prune': {
      // A one-off run goes on until nothing that old is left.
      const instances = await pruneSagas(db, {
        olderThanMs: parsed.olderThanMs,
        ...(parsed.includeParked
          ? { statuses: ['completed', 'compensated', 'cancelled', 'failed'] as const }
          : {}),
        maxBatches: Number.MAX_SAFE_INTEGER,
      })
      const flows = await pruneFlowEvents(db, {
        olderThanMs: parsed.olderThanMs,
        maxBatches: Number.MAX_SAFE_INTEGER,
      })
      out.write(
        `removed ${counted(instances, 'saga instance')} and ${counted(flows, 'tracked flow')} older than ${parsed.olderThan}\n`,
      )
      return 0
    }
  }
}

/**
 * An unknown id or an operation the instance's status refuses: one line, exit 1; any other
 * error is thrown on. The library's messages are sentences (`No saga instance has the id ...`,
 * `Saga <id> is completed: ...`); after `breakwater saga:` they start in lower case, as every
 * `breakwater <command>:` message does. Printed as they were, `retry` and `cancel` said
 * `No saga instance ...` where `show` said `no saga instance ...`.
 */
function refused(error: unknown, err: TextSink): number {
  if (!(error instanceof SagaNotFoundError || error instanceof SagaStateConflictError)) throw error
  // Both messages begin with a word of their own ("No", "Saga"), never a name or an acronym.
  const message = error.message.charAt(0).toLowerCase() + error.message.slice(1)
  // One line, escaped: the message quotes the id as given or stored (JSON.stringify's quoting
  // leaves C1 controls such as \u009b as they are; a conflict's message does not quote it).
  err.write(`breakwater saga: ${oneLine(message)}\n`)
  return 1
}

type Definitions = readonly SagaDefinition<unknown, unknown>[]

// Runs `read` with the definitions `--module` exports, if given. The module is the user's to
// fix as for `saga worker`: one that names no file or exports no `sagas`, or a definition that
// is not from defineSaga, exits 2 with the usage; one that throws while it loads exits 1.
async function withModule(
  parsed: Parsed,
  err: TextSink,
  read: (definitions: Definitions | undefined) => Promise<number>,
): Promise<number> {
  const usageError = (message: string) => {
    err.write(`breakwater saga: ${oneLine(message)}\n\n${usage}`)
    return 2
  }
  let definitions: Definitions | undefined
  if (parsed.module !== undefined) {
    const { loadSagas } = await import('./saga-worker.js')
    try {
      definitions = await loadSagas(parsed.module)
    } catch (error) {
      if (error instanceof UsageError) return usageError(error.message)
      throw error
    }
  }
  try {
    return await read(definitions)
  } catch (error) {
    if (error instanceof InvalidOptionError && error.option.startsWith('options.definitions'))
      return usageError(`--module: ${error.message.replace('options.definitions', 'sagas')}`)
    throw error
  }
}

function adminOptions(parsed: Parsed): { by: string; reason?: string } {
  return parsed.reason === undefined ? { by: parsed.by } : { by: parsed.by, reason: parsed.reason }
}

// A time past Date's range (a sleep stored by a version that did not refuse it) is printed as
// its number: `show` and `list` must still work on such an instance.
function time(ms: number | undefined): string {
  if (ms === undefined) return '-'
  const date = new Date(ms)
  return Number.isNaN(date.getTime()) ? `${ms} (epoch ms, past Date's range)` : date.toISOString()
}

function table(rows: readonly (readonly string[])[]): string {
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)))
  return rows
    .map((r) =>
      r
        .map((cell, c) => (c === r.length - 1 ? cell : cell.padEnd(widths[c]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n')
}

// What a step threw and why a saga parked is stored as thrown, and may quote a connection URL:
// it is redacted before being cut, so a cut cannot leave a password that no longer looks like
// one (`postgres://app:hunt…`).
function truncate(text: string, max: number): string {
  const shown = printable(redactSecrets(text))
  return shown.length > max ? `${shown.slice(0, max - 1)}…` : shown
}

// A row changed outside breakwater is listed with the others: its cells that cannot be read
// say so (a step shown as '-' read as a finished saga's), and a line under the table names
// the columns and where to see why (`saga show` fails naming the problem).
const unreadableCell = '(unreadable)'

// Why an instance's definition is in question, for the note under `saga list` and the
// definition line of `saga show`.
function definitionNote(
  saga: Pick<SagaSummary, 'name' | 'version' | 'definition' | 'definitionProblem'>,
  definitions: Definitions | undefined,
): string {
  const name = printable(saga.name)
  const stored = `${name}@${saga.version ?? unreadableCell}`
  const problem: SagaDefinitionProblem = saga.definitionProblem!
  switch (problem) {
    case 'definition-mismatch':
      return `its name and version (${stored}) are not those of its definition column (${saga.definition === undefined ? 'not text' : printable(saga.definition)}), which workers run it by: a worker reports it (STORED_DATA_INVALID) and does not run it`
    case 'unknown-name':
      return `no definition of --module is named ${name}: a worker with them does not run it`
    case 'unknown-version': {
      const versions = (definitions ?? []).filter((d) => d.name === saga.name).map((d) => d.version)
      return `${stored} is not among the definitions of --module (${name} has ${versions.length === 1 ? 'version' : 'versions'} ${versions.sort((a, b) => a - b).join(', ')}): a worker with them does not run it`
    }
    case 'steps-changed': {
      const steps = definitions?.find((d) => d.key === saga.definition)?.stepNames ?? []
      return `its stored steps are not those of ${stored} in --module (${steps.map(printable).join(', ')}): the definition was changed without a version bump, and a worker with it parks the instance`
    }
  }
}

function formatList(sagas: readonly SagaSummary[], definitions?: Definitions): string {
  if (sagas.length === 0) return 'no saga instances\n'
  const bad = (s: SagaSummary, ...columns: string[]) =>
    columns.some((c) => s.unreadable?.includes(c) === true)
  const rows = [
    ['ID', 'SAGA', 'STATUS', 'STEP', 'ATTEMPT', 'UPDATED', 'REASON'],
    ...sagas.map((s) => [
      printable(s.id),
      `${printable(s.name)}@${s.version ?? unreadableCell}${s.definitionProblem === undefined ? '' : ` (${s.definitionProblem})`}`,
      s.status,
      bad(s, 'steps', 'step_index') ? unreadableCell : (s.step ?? '-'),
      s.attempt === undefined ? unreadableCell : String(s.attempt),
      s.updatedAt === undefined ? unreadableCell : time(s.updatedAt),
      bad(s, 'reason') ? unreadableCell : truncate(s.reason ?? '', 60),
    ]),
  ]
  const notes = sagas.flatMap((s) => [
    ...(s.unreadable === undefined
      ? []
      : [
          `saga ${printable(s.id)}: ${s.unreadable.join(', ')} cannot be read (changed outside breakwater); breakwater saga show ${printable(s.id)} says why\n`,
        ]),
    ...(s.definitionProblem === undefined
      ? []
      : [`saga ${printable(s.id)}: ${definitionNote(s, definitions)}\n`]),
  ])
  return `${table(rows)}\n${notes.length === 0 ? '' : `\n${notes.join('')}`}`
}

function formatShow(
  saga: SagaInstance,
  timeline: readonly SagaTimelineEntry[],
  definitions?: Definitions,
): string {
  const lines = [
    `saga      ${printable(saga.id)}`,
    `name      ${printable(saga.name)}@${saga.version}`,
    `status    ${saga.status}${saga.cancelRequested && saga.status !== 'cancelled' ? ' (cancel requested)' : ''}`,
  ]
  if (saga.definitionProblem !== undefined)
    lines.push(
      `definition ${saga.definition === undefined ? '(not text)' : printable(saga.definition)} (${saga.definitionProblem}: ${definitionNote(saga, definitions)})`,
    )
  if (saga.reason !== undefined) lines.push(`reason    ${printable(saga.reason)}`)
  lines.push(
    `created   ${time(saga.createdAt)}`,
    `updated   ${time(saga.updatedAt)}`,
    `finished  ${time(saga.finishedAt)}`,
  )
  if (saga.status === 'running' || saga.status === 'compensating') {
    lines.push(
      saga.leaseOwner === undefined
        ? `next run  ${time(saga.nextRunAt)}`
        : `lease     ${printable(saga.leaseOwner)} until ${time(saga.leaseExpiresAt)} (token ${saga.leaseToken})`,
    )
  }
  // JSON escapes line breaks but leaves U+2028, U+2029 and C1 controls (U+009B, a CSI) as they are.
  lines.push(
    `input     ${printable(JSON.stringify(saga.input))}`,
    `context   ${printable(JSON.stringify(saga.context))}`,
  )
  lines.push('', 'steps')
  const stepRows = [
    ['#', 'STEP', 'STATUS', 'ATTEMPTS', 'COMPENSATION', 'LAST ERROR'],
    ...saga.steps.map((s, i) => [
      String(i + 1),
      printable(s.name),
      s.status,
      String(s.attempts),
      s.compensationAttempts === undefined
        ? '-'
        : `${s.status === 'compensated' ? 'done' : 'pending'} (${isCount(s.compensationAttempts) ? counted(s.compensationAttempts, 'attempt') : 'unreadable attempts'})`,
      truncate(errorCell(s.compensationError ?? s.error), 70),
    ]),
  ]
  lines.push(
    table(stepRows)
      .split('\n')
      .map((l) => `  ${l}`)
      .join('\n'),
  )
  lines.push('', 'timeline')
  lines.push(`  ${time(saga.createdAt)}  started`)
  for (const entry of timeline) lines.push(`  ${formatEntry(entry)}`)
  // The reason, errors, input and context are stored text: none may show a password.
  return `${redactSecrets(lines.join('\n'))}\n`
}

// A step's compensation count and its errors' name and message are only shown (getSaga checks
// what a worker acts on), so they come as stored: a row changed outside breakwater showed
// `done (many attempts)` or `undefined: undefined`, as if a step had thrown an error of that
// name. Shown as unreadable instead; --json gives them as stored.
function isCount(value: unknown): value is number {
  return Number.isSafeInteger(value) && (value as number) >= 0
}

// A timeline entry's detail is only shown too: an `error` of null threw a bare TypeError out of
// `saga show`. Not an object, it is no error either.
function errorCell(error: unknown): string {
  if (error === undefined) return ''
  if (typeof error !== 'object' || error === null) return '(unreadable error)'
  const { name, message } = error as { name?: unknown; message?: unknown }
  return typeof name === 'string' && typeof message === 'string'
    ? `${name}: ${message}`
    : '(unreadable error)'
}

// A time in an entry's detail: one that is not a whole number of epoch ms from 0 (changed
// outside breakwater) was left out of the line, or shown as a time before 1970.
function detailTime(value: unknown): string {
  return Number.isSafeInteger(value) && (value as number) >= 0
    ? time(value as number)
    : unreadableCell
}

// One line per entry, its columns that cannot be read shown as `(unreadable)` and named at its
// end with what is wrong with each and the entry's seq (the row to fix): one such entry failed
// the whole of `saga show`, hiding the instance and the rest of its timeline.
function formatEntry(entry: SagaTimelineEntry): string {
  const bad = (column: string) => entry.unreadable?.some((u) => u.column === column) === true
  const parts = [bad('at') ? unreadableCell : time(entry.at), entry.kind ?? unreadableCell]
  if (bad('step')) parts.push(unreadableCell)
  else if (entry.step !== undefined) parts.push(entry.step)
  if (bad('attempt')) parts.push(`attempt ${unreadableCell}`)
  else if (entry.attempt !== undefined) parts.push(`attempt ${entry.attempt}`)
  const d = entry.detail ?? {}
  if (d.error !== undefined) parts.push(`error ${errorCell(d.error)}`)
  if (d.retryAt !== undefined) parts.push(`retry at ${detailTime(d.retryAt)}`)
  if (d.until !== undefined) parts.push(`until ${detailTime(d.until)}`)
  if (d.final === true) parts.push('(final)')
  if (d.previousOwner !== undefined)
    parts.push(
      `(lease of ${typeof d.previousOwner === 'string' ? d.previousOwner : unreadableCell} expired)`,
    )
  if (d.reason !== undefined)
    parts.push(`reason: ${typeof d.reason === 'string' ? d.reason : unreadableCell}`)
  if (bad('worker')) parts.push(`[${unreadableCell}]`)
  else if (entry.worker !== undefined) parts.push(`[${entry.worker}]`)
  if (entry.unreadable !== undefined)
    parts.push(
      `event ${entry.seq} cannot be read (changed outside breakwater): ${entry.unreadable.map((u) => `${u.column} ${u.problem}`).join('; ')}`,
    )
  return printable(parts.join('  '))
}
