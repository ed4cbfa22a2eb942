const isNumber = require("is-number");

console.log(`logged in as node-bot (is-number says ${isNumber(7)})`);
setInterval(() => console.log("still here"), 5000);
