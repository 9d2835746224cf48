// A bad argument is one line on stderr that quotes it. A value holding a control character was
// quoted as it is: a BREAKWATER_DB_URL read from a CRLF .env file ended in `\r`, and the
// terminal showed `"reakwater outbox: ...` (the carriage return sent the closing quote over the
// line's start), while the message itself asked "a line ending pasted with it?"; a `\n` split
// the line in two, and an escape sequence acted on the terminal. The value is now shown with its
// control characters escaped (`\r`, `\u001b`), as stored text is.
import { EventEmitter } from 'node:events'
import { describe, expect, it } from 'vitest'
import { migrateCommand } from '../../src/cli/migrate.js'
import { outboxCommand } from '../../src/cli/outbox.js'
import { relayCommand } from '../../src/cli/relay.js'
import { sagaCommand } from '../../src/cli/saga.js'
import { sagaWorkerCommand } from '../../src/cli/saga-worker.js'
import { runCli } from '../process/cli-process.js'
import { type CapturedEntry, runCaptured } from './captured.js'

const quiet = { stdout: { write: () => {} }, signals: new EventEmitter() }
const pastedUrl = { BREAKWATER_DB_URL: 'sqlite:./app.db\r' }

const cases: ReadonlyArray<[string, CapturedEntry, string[], string]> = [
  [
    'outbox stats, BREAKWATER_DB_URL ending in \\r',
    (args, deps) => outboxCommand(args, { ...deps, env: pastedUrl }),
    ['stats'],
    'got "sqlite:./app.db\\r"',
  ],
  [
    'relay, BREAKWATER_DB_URL ending in \\r',
    (args, deps) => relayCommand(args, { ...quiet, ...deps, env: pastedUrl }),
    [],
    'got "sqlite:./app.db\\r"',
  ],
  [
    'relay, a --log-level ending in \\r',
    (args, deps) => relayCommand(args, { ...quiet, ...deps, env: {} }),
    ['--db', 'sqlite:./app.db', '--broker', 'nats://127.0.0.1:4222', '--log-level', 'info\r'],
    'got "info\\r"',
  ],
  [
    'migrate, a --db ending in \\n',
    (args, deps) => migrateCommand(args, { capabilities: {}, ...deps, env: {} }),
    ['--db', 'sqlite:./app.db\n'],
    'got "sqlite:./app.db\\n"',
  ],
  [
    'migrate, an unknown argument with an escape sequence',
    (args, deps) => migrateCommand(args, { capabilities: {}, ...deps, env: {} }),
    ['--dbx\u001b[2J'],
    'unknown argument "--dbx\\u001b[2J"',
  ],
  [
    'saga list, a --status ending in \\r',
    (args, deps) => sagaCommand(args, { ...deps, env: {} }),
    ['list', '--status', 'failed\r'],
    'got "failed\\r"',
  ],
  [
    'saga worker, a --log-level ending in \\r',
    (args, deps) => sagaWorkerCommand(args, { ...quiet, ...deps, env: {} }),
    ['--module', 'x.js', '--log-level', 'info\r'],
    'got "info\\r"',
  ],
]

describe('a bad argument holding a control character', () => {
  it.each(cases)('%s: one line quoting it escaped, exit 2', async (_label, entry, args, shown) => {
    const result = await runCaptured(entry, args)
    expect(result.code).toBe(2)
    const [first, blank] = result.stderr.split('\n')
    expect(first).toContain(shown)
    // The line ends there: the usage follows after an empty line.
    expect(blank).toBe('')
    expect(result.stderr).not.toContain('\r')
    expect(result.stderr).not.toContain('\u001b')
  })

  it('breakwater <unknown command> quotes it escaped', async () => {
    const result = await runCli(['relay\r'])
    expect(result.code).toBe(2)
    expect(result.stderr.split('\n')[0]).toBe('breakwater: unknown command "relay\\r"')
    expect(result.stderr).not.toContain('\r')
  })
})
