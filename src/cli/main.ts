#!/usr/bin/env node
// The `breakwater` command. This file decides exit codes; every command is a thin layer that
// parses its arguments and calls the library. One exception: a long-running command (relay,
// saga worker, a single-process proxy) whose drain did not finish in time ends the process
// itself (see src/cli/long-running.ts), since what did not stop may hold the process open. Commands load lazily so that, say,
// `breakwater migrate` never loads the demo's HTTP servers.
// First of all, for its side effect: SIGTERM, SIGINT and SIGHUP held before the rest loads.
import './signals-at-start.js'
import { BreakwaterError } from '../core/errors.js'
import { type HeldSignals, holdSignals } from './held-signals.js'
import { commandFinished, takeHeldAtStart } from './signals-at-start.js'
import { StartupError } from './startup-error.js'
import { oneLine, packageVersion, wantsHelp } from './usage.js'

/** A command's entry point: gets its own arguments, resolves to the exit code. */
type Command = (args: string[]) => Promise<number>

/**
 * Loads a command that drains on SIGTERM and SIGINT with both held until its own handlers are
 * on: since main.ts started (signals-at-start.ts), or from here (`breakwater help relay`).
 * Loading takes a second or more on a busy machine, and a signal meanwhile ended the process by
 * Node's default action (143, or 130 for SIGINT), skipping the graceful stop the command
 * documents. `load` hands them to the command; what is still held when it ends (after --help or
 * a bad argument) is let go, and a load that fails gives them their default action back.
 */
async function loadHolding(load: (held: HeldSignals) => Promise<Command>): Promise<Command> {
  const held = takeHeldAtStart() ?? holdSignals()
  try {
    const command = await load(held)
    return (args) => command(args).finally(() => held.handOver())
  } catch (error) {
    held.release()
    throw error
  }
}

/** `load` gets the command's arguments: `saga worker` is loaded (and held) apart from `saga`. */
const commands: Record<string, { summary: string; load: (args: string[]) => Promise<Command> }> = {
  demo: {
    summary: 'run the demo (`demo policies`: the resilience-policy scenarios)',
    load: () =>
      loadHolding(async (held) => {
        const { demoCommand } = await import('./demo.js')
        return (args) => demoCommand(args, { held })
      }),
  },
  migrate: {
    summary: 'apply database migrations: migrate --db <url>',
    load: async () => (await import('./migrate-entry.js')).migrateEntry,
  },
  outbox: {
    summary: 'inspect the outbox: outbox dead|redrive|stats|prune --db <url>',
    load: async () => (await import('./outbox.js')).outboxCommand,
  },
  saga: {
    summary:
      'operate sagas: saga list|show|retry|cancel|prune --db <url>, saga worker --module <file>',
    load: async (args) =>
      args[0] === 'worker'
        ? // The worker drains on a signal; the admin commands end by it (and hold nothing).
          loadHolding(async (held) => {
            const { sagaWorkerCommand } = await import('./saga-worker.js')
            return (all) => sagaWorkerCommand(all.slice(1), { held })
          })
        : (await import('./saga.js')).sagaCommand,
  },
  relay: {
    summary: 'publish outbox events to a broker: relay --db <url> --broker <url>',
    load: () =>
      loadHolding(async (held) => {
        const { relayCommand } = await import('./relay.js')
        return (args) => relayCommand(args, { held })
      }),
  },
  proxy: {
    summary:
      'run the resilience proxy: proxy --config <file.yaml> [--workers N] [--start-timeout MS] [--check]',
    load: () =>
      loadHolding(async (held) => {
        const { proxyCommand } = await import('./proxy.js')
        return (args) => proxyCommand(args, { held })
      }),
  },
  version: {
    summary: 'print the version of breakwater (also --version or -V)',
    load: async () => versionCommand,
  },
}

/** `breakwater version` (and `--version`, `-V`): the package version alone, for scripts. */
async function versionCommand(args: string[]): Promise<number> {
  if (wantsHelp(args)) {
    process.stdout.write(
      'usage: breakwater version\n\nprints the version of breakwater (also: breakwater --version, -V)\n',
    )
    return 0
  }
  if (args.length > 0) {
    process.stderr.write(
      `breakwater version: takes no arguments, got "${oneLine(args[0]!)}"\n\n${usage()}`,
    )
    return 2
  }
  process.stdout.write(`${packageVersion()}\n`)
  return 0
}

// What the exit codes mean, the same for every command: a script tells a mistake in its own
// arguments (fix the call, retrying is useless) from a failure it may retry.
const exitCodes = `exit codes:
  0    success
  1    a failure at run time: a database or broker that cannot be used or fails, a
       process that could not start or did not stop in time, an id that is not there,
       output that cannot be written (a full disk)
  2    a bad argument: an unknown command or option, a bad value, a malformed URL, a
       sqlite: path that cannot be a database file (a folder, a folder that cannot be
       created), a sqlite://host/path URL, a proxy config that is not valid (at
       start: \`proxy --check\` exits 1 listing its faults)
  141  the reader of the output went away (\`breakwater saga list | head -1\`)
  143  stopped by SIGTERM (130: SIGINT) before it finished, as shells show a signal's
       end; the relay, saga worker, proxy and shop demo drain on either and exit as above,
       also when it comes while they load (only Node's own start is left to 143 and 130)
`

function usage(): string {
  const lines = Object.entries(commands).map(([name, c]) => `  ${name.padEnd(10)} ${c.summary}`)
  return `usage: breakwater <command> [options]\n       breakwater --version | --help\n\ncommands:\n${lines.join('\n')}\n\n${exitCodes}`
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv
  if (name === undefined) {
    // No command is a usage error: the usage goes with the other errors, to stderr.
    process.stderr.write(`breakwater: a command is needed\n\n${usage()}`)
    return 2
  }
  if (name === '--help' || name === '-h' || name === 'help') {
    // `help relay` is the relay's usage, and `help saga worker` the worker's: ignoring the
    // words would answer another question.
    // `help help` is this usage: `help` is no command of its own; so are `help --help` and
    // `help -h`, and `help --version` is the version command's (they were unknown commands).
    const about = rest[0] === '--version' || rest[0] === '-V' ? 'version' : rest[0]
    if (name === 'help' && about !== undefined && !['help', '--help', '-h'].includes(about))
      return runCommand(about, [...rest.slice(1), '--help'])
    process.stdout.write(usage())
    return 0
  }
  if (name === '--version' || name === '-V') return runCommand('version', rest)
  return runCommand(name, rest)
}

async function runCommand(name: string, args: string[]): Promise<number> {
  const command = Object.hasOwn(commands, name) ? commands[name] : undefined
  if (command === undefined) {
    process.stderr.write(`breakwater: unknown command "${oneLine(name)}"\n\n${usage()}`)
    return 2
  }
  return (await command.load(args))(args)
}

// A reader that went away (`breakwater saga list | head -1`, a log shipper that died): Node
// ignores SIGPIPE, so the next write fails with EPIPE, an unhandled 'error' that printed a
// stack. End as a command killed by SIGPIPE does (128 + 13), silently: nobody reads the output.
// Any other failure to write it (a full disk under `> report.json`, a log volume that filled up
// under the relay) was thrown on from here, and Node printed a stack of the bundle's internals:
// one line naming it instead, exit 1, a failure at run time. stderr may fail too; nothing is
// left to tell it to then.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code === 'EPIPE') process.exit(141)
  try {
    process.stderr.write(`breakwater: cannot write the output: ${oneLine(error.message)}\n`)
  } finally {
    process.exit(1)
  }
})

try {
  process.exitCode = await main(process.argv.slice(2))
} catch (error) {
  // Option and config errors are the user's to fix: print the message, not a stack.
  if (
    BreakwaterError.is(error) &&
    (error.code === 'INVALID_OPTION' || error.code === 'CONFIG_INVALID')
  ) {
    process.stderr.write(`breakwater: ${error.message}\n`)
    process.exitCode = 2
  } else if (error instanceof StartupError) {
    // A process that could not start (a port in use, a store that does not open): the
    // message names what failed; a stack would only hide it.
    process.stderr.write(`breakwater: ${error.message}\n`)
    process.exitCode = 1
  } else {
    process.stderr.write(
      `breakwater: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
    )
    process.exitCode = 1
  }
}

// The exit code is decided: a SIGTERM or Ctrl-C while what is still open lets the process end
// ends it with that code (see signals-at-start.ts), not as a cut-short command.
commandFinished()
