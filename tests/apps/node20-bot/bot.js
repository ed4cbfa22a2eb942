console.log("node says", process.version);
setInterval(() => {}, 1000);
