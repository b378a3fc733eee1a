'use strict'
// An Electron main process that runs its backend with backend-process-manager: the backend starts before the
// window, the window loads only once the backend answers, and quitting waits for a graceful stop (manage():
// the first quit is held until the backend stopped, a quit that cannot wait stops it synchronously, and a
// failed start shows an error box with the backend's last output).
// Packaging (electron-builder): keep the addon and the backend out of the asar archive —
//   "asarUnpack": ["**/*.node", "backend/**"]
// The manager maps app.asar → app.asar.unpacked for the backend when `app.isPackaged` is true, and runs it
// with Electron's own Node (ELECTRON_RUN_AS_NODE=1), so users need no Node installed.
// In development, the menu Developer → Backend dashboard opens a window with live charts of the backend.
const path = require('node:path')
const { app, BrowserWindow, Menu, dialog } = require('electron')
const { ProcessManager } = require('backend-process-manager')
const { manage } = require('backend-process-manager/electron')

const projectRoot = path.resolve(__dirname, '..') // holds backend/server.js
const pm = new ProcessManager({
  name: 'example-app-backend',
  entry: 'backend/server.js',
  port: 8000,
  startTimeoutMs: 15000,
})

let quitting = false
let dashboardWindow = null

manage(app, pm, { dialog })
app.on('before-quit', () => (quitting = true))

async function createWindow() {
  let backend
  try {
    backend = await pm.startBackend(projectRoot, app.isPackaged)
  } catch {
    // manage() has shown the error (its `start-failed` event).
    app.quit()
    return
  }
  const win = new BrowserWindow({ width: 1200, height: 800 })
  await win.loadURL(backend.url)
}

/**
 * The manager's dashboard (127.0.0.1 only; its URL carries a random token) in a window of its own: CPU,
 * memory, health latency and restarts, with Stop and Restart buttons. Closing the window ends the server.
 */
async function openDashboard() {
  if (dashboardWindow) return dashboardWindow.focus()
  const dashboard = await pm.dashboard()
  dashboardWindow = new BrowserWindow({
    width: 1100,
    height: 800,
    title: 'Backend dashboard',
    webPreferences: { contextIsolation: true, sandbox: true, nodeIntegration: false },
  })
  dashboardWindow.on('closed', () => {
    dashboardWindow = null
    dashboard.close()
  })
  await dashboardWindow.loadURL(dashboard.url)
}

function developerMenu() {
  const template = [
    ...(process.platform === 'darwin' ? [{ role: 'appMenu' }] : []),
    { role: 'fileMenu' },
    { role: 'viewMenu' },
    {
      label: 'Developer',
      submenu: [
        {
          label: 'Backend dashboard',
          accelerator: 'CmdOrCtrl+Shift+D',
          click: () => openDashboard().catch((err) => dialog.showErrorBox('The dashboard could not open', err.message)),
        },
      ],
    },
  ]
  Menu.setApplicationMenu(Menu.buildFromTemplate(template))
}

pm.on('exit', ({ expected, exitCode, signal }) => {
  if (expected || quitting) return
  dialog.showErrorBox('The backend stopped', `It exited with ${exitCode !== null ? `code ${exitCode}` : signal}. Restart the app.`)
})

app.whenReady().then(() => {
  // A developer's tool: not in the packaged app.
  if (!app.isPackaged) developerMenu()
  return createWindow()
})

app.on('window-all-closed', () => {
  if (process.platform !== 'darwin') app.quit()
})
