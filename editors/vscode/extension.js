// Starts `edgeflow lsp` over stdio for .ef files. The server does the work: diagnostics, hover,
// definitions, references, completion, symbols and formatting.
"use strict";
const vscode = require("vscode");
const { LanguageClient, TransportKind } = require("vscode-languageclient/node");

let client;

function activate(context) {
  const command = vscode.workspace.getConfiguration("edgeflow").get("executable", "edgeflow");
  const serverOptions = { command, args: ["lsp"], transport: TransportKind.stdio };
  const clientOptions = {
    documentSelector: [{ scheme: "file", language: "edgeflow" }],
    synchronize: { fileEvents: vscode.workspace.createFileSystemWatcher("**/*.{ef,onnx}") },
  };
  client = new LanguageClient("edgeflow", "edgeflow", serverOptions, clientOptions);
  context.subscriptions.push({ dispose: () => client && client.stop() });
  return client.start();
}

function deactivate() {
  return client ? client.stop() : undefined;
}

module.exports = { activate, deactivate };
