// Starts the real servers the integration tests need, once per vitest run, and stops them at
// the end (also when tests fail; a watchdog covers a runner killed outright). A server that
// cannot start does not abort the run: its reason is handed to the tests, and every test that
// needs that server fails with it, so nothing is skipped silently.
import type { TestProject } from 'vitest/node'
import { type StartedService, startService, stopService } from '../../scripts/services.mjs'
import { startRunBrokers } from './brokers.js'

declare module 'vitest' {
  export interface ProvidedContext {
    /** Admin URL of the test PostgreSQL server, when it runs. */
    breakwaterPostgresUrl: string | undefined
    /** Why the test PostgreSQL server is not available. */
    breakwaterPostgresError: string | undefined
  }
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  // The brokers (RabbitMQ boots for seconds) start while PostgreSQL does.
  const [stopPostgres, stopBrokers] = await Promise.all([
    setupPostgres(project),
    startRunBrokers(project),
  ])
  return async () => {
    await Promise.all([stopPostgres(), stopBrokers()])
  }
}

async function setupPostgres(project: TestProject): Promise<() => Promise<void>> {
  const given = process.env.BREAKWATER_TEST_PG_URL
  if (given !== undefined && given !== '') {
    project.provide('breakwaterPostgresUrl', given)
    project.provide('breakwaterPostgresError', undefined)
    return async () => {}
  }
  let postgres: StartedService
  try {
    postgres = await startService('postgres', {
      watchPid: process.pid,
      log: (line) => process.stderr.write(`[global-setup] ${line}\n`),
    })
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error)
    process.stderr.write(`[global-setup] PostgreSQL could not be started: ${reason}\n`)
    project.provide('breakwaterPostgresUrl', undefined)
    project.provide('breakwaterPostgresError', reason)
    return async () => {}
  }
  // Child processes that tests spawn (crash tests, CLI runs) find the server through the env.
  process.env.BREAKWATER_TEST_PG_URL = postgres.url
  project.provide('breakwaterPostgresUrl', postgres.url)
  project.provide('breakwaterPostgresError', undefined)
  let stopped = false
  const stopNow = (): void => {
    if (stopped) return
    stopped = true
    stopService(postgres)
  }
  // Belt and braces: an exit that skips teardown still stops the server synchronously.
  process.once('exit', stopNow)
  return async () => {
    process.removeListener('exit', stopNow)
    await postgres.stop()
    stopped = true
    delete process.env.BREAKWATER_TEST_PG_URL
  }
}
