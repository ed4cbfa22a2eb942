console.log('never run');
