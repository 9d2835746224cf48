// Stops a service started for a process once that process is gone (killed before it could
// run its teardown), so no server or temporary folder is left behind.
// Usage: BREAKWATER_WATCHDOG_STATE=<state-json> node watchdog.mjs <pid>
import { stopService } from '../services.mjs'

const pid = Number(process.argv[2])
const state = JSON.parse(process.env.BREAKWATER_WATCHDOG_STATE ?? '{}')

function alive() {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return error.code === 'EPERM'
  }
}

process.on('SIGTERM', () => process.exit(0))
const timer = setInterval(() => {
  if (alive()) return
  clearInterval(timer)
  try {
    stopService(state)
  } finally {
    process.exit(0)
  }
}, 1000)
