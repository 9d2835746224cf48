// SIGTERM while `breakwater relay` or `breakwater saga worker` is still connecting to a
// PostgreSQL server that accepted the connection and never answers (a hung server, a half-up
// failover): the start went on waiting for the connect, and 10 s later (pg's connect timeout)
// the process printed "cannot open ...: Connection terminated due to connection timeout" and
// exited 1, as if the database had failed rather than the operator asked it to stop. The open
// now gives up at the signal: the process exits 0 at once. Found by exploratory testing.
import { fileURLToPath } from 'node:url'
import { afterEach, describe, expect, it } from 'vitest'
import { type CliProcess, spawnCli, spawnCliFromSources } from '../process/cli-process.js'
import { startSilentServer } from '../support/silent-server.js'

const module = fileURLToPath(new URL('./fixtures/hanging-sagas.ts', import.meta.url))
const cleanups: Array<() => unknown> = []
afterEach(async () => {
  for (const fn of cleanups.splice(0).reverse()) await fn()
})

async function stopWhileConnecting(
  start: (url: string) => CliProcess,
  drainMessage: string,
): Promise<void> {
  const silent = await startSilentServer()
  cleanups.push(() => silent.close())
  const cli = start(`postgres://app:secret@127.0.0.1:${silent.port}/app`)
  cleanups.push(() => cli.kill())
  await silent.firstConnection
  cli.child.kill('SIGTERM')
  const exit = await cli.exited
  expect(exit, cli.stdout() + cli.stderr()).toEqual({ code: 0, signal: null })
  expect(cli.stderr()).toBe('')
  expect(cli.lines.map((l) => l.msg)).toEqual([drainMessage])
}

describe('SIGTERM while the database connect is under way', () => {
  it('relay: stops at once, exit 0', async () => {
    await stopWhileConnecting(
      (url) => spawnCli(['relay', '--db', url]),
      'stopping: finishing the batch in hand',
    )
  })

  it('saga worker: stops at once, exit 0', async () => {
    await stopWhileConnecting(
      (url) => spawnCliFromSources(['saga', 'worker', '--module', module, '--db', url]),
      'stopping: finishing the steps in hand',
    )
  })
})
